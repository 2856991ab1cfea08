//! Everything that calls into nginx: module definition, directives, handlers.

mod conf;
mod handler;
mod literals;
mod module;
mod redis;
mod refresh;
pub(crate) mod util;
mod vars;
mod zone;
