//! Everything that calls into nginx: module definition, directives, handlers.

mod conf;
mod module;
mod redis;
mod util;
