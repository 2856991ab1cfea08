//! Configuration plumbing both modules share: one notion of "not set in this block" (nginx's
//! own markers, so nginx's slot setters and ours write the same fields), merging, bounded slot
//! setters whose `nginx -t` error names the directive and the allowed range, and the
//! directive table builder.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_2MORE,
    NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12, NGX_CONF_TAKE2,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
    NGX_HTTP_SRV_CONF,
};

use super::util::{conf_args, conf_error, str_bytes, CONF_OK};

/// A value type with nginx's "unset" marker (`NGX_CONF_UNSET*`): what a configuration
/// starts with, what nginx's slot setters check for "is duplicate", and what merging fills.
pub trait Marker: Copy + PartialEq {
    const UNSET: Self;
}

/// `NGX_CONF_UNSET`: flags (`ngx_flag_t`) and signed numbers.
impl Marker for isize {
    const UNSET: Self = -1;
}

/// `NGX_CONF_UNSET_UINT`, `_SIZE` and `_MSEC` (`ngx_msec_t` is a `usize`).
impl Marker for usize {
    const UNSET: Self = usize::MAX;
}

/// `NGX_CONF_UNSET_PTR`.
impl<T> Marker for *mut T {
    const UNSET: Self = usize::MAX as *mut T;
}

/// nginx's `ngx_conf_merge_*_value`: a field still unset takes the enclosing block's value,
/// or `default` when that is unset too.
pub fn merge<T: Marker>(conf: &mut T, prev: T, default: T) {
    if *conf == T::UNSET {
        *conf = if prev == T::UNSET { default } else { prev };
    }
}

/// A setting that a configuration block may leave unset. Laid out as the bare value holding
/// nginx's marker, so nginx's slot setters and `set_*_bounded` can store into it by offset.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unset<T: Marker>(T);

impl<T: Marker> Default for Unset<T> {
    fn default() -> Self {
        Unset(T::UNSET)
    }
}

impl<T: Marker> Unset<T> {
    /// The value, if this block (or a merge) set it.
    pub fn get(self) -> Option<T> {
        (self.0 != T::UNSET).then_some(self.0)
    }

    pub fn is_set(self) -> bool {
        self.0 != T::UNSET
    }

    pub fn set(&mut self, value: T) {
        self.0 = value;
    }

    /// The value, or `default` when unset (always set once merged).
    pub fn or(self, default: T) -> T {
        self.get().unwrap_or(default)
    }

    /// Takes the enclosing block's value, or `default`, when unset here.
    pub fn merge(&mut self, prev: Self, default: T) {
        merge(&mut self.0, prev.0, default);
    }
}

/// The same notion for settings that are Rust values: `None` takes the enclosing block's.
pub fn inherit<T: Clone>(conf: &mut Option<T>, prev: &Option<T>) {
    if conf.is_none() {
        conf.clone_from(prev);
    }
}

/// Where a directive may appear: `http`, `server` and `location`.
pub const ANY_LEVEL: ngx_uint_t =
    (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF) as ngx_uint_t;
/// Only in `http`.
pub const HTTP: ngx_uint_t = NGX_HTTP_MAIN_CONF as ngx_uint_t;
/// Only in `upstream`.
pub const UPSTREAM: ngx_uint_t = ngx::ffi::NGX_HTTP_UPS_CONF as ngx_uint_t;
/// Only in `location`.
pub const LOCATION: ngx_uint_t = NGX_HTTP_LOC_CONF as ngx_uint_t;
/// Argument counts.
pub const NOARGS: ngx_uint_t = NGX_CONF_NOARGS as ngx_uint_t;
pub const TAKE1: ngx_uint_t = NGX_CONF_TAKE1 as ngx_uint_t;
pub const TAKE2: ngx_uint_t = NGX_CONF_TAKE2 as ngx_uint_t;
pub const TAKE12: ngx_uint_t = NGX_CONF_TAKE12 as ngx_uint_t;
pub const FLAG: ngx_uint_t = NGX_CONF_FLAG as ngx_uint_t;
pub const ONE_OR_MORE: ngx_uint_t = NGX_CONF_1MORE as ngx_uint_t;
pub const TWO_OR_MORE: ngx_uint_t = NGX_CONF_2MORE as ngx_uint_t;

/// A directive handler as nginx calls it.
pub type SetFn =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// Builds one entry of a directive table (`const`, for the module's static table). By
/// default the handler gets the location configuration and offset 0.
pub struct Directive(ngx_command_t);

impl Directive {
    pub const fn new(name: ngx_str_t, type_: ngx_uint_t, set: SetFn) -> Self {
        Directive(ngx_command_t {
            name,
            type_,
            set: Some(set),
            conf: NGX_HTTP_LOC_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        })
    }

    /// The handler stores at `offset` of the configuration (nginx's slot setters, ours).
    pub const fn offset(mut self, offset: usize) -> Self {
        self.0.offset = offset;
        self
    }

    /// The handler gets the module's http-level (main) configuration.
    pub const fn main_conf(mut self) -> Self {
        self.0.conf = NGX_HTTP_MAIN_CONF_OFFSET;
        self
    }

    /// The handler gets no configuration of the module (it keeps its state elsewhere).
    pub const fn no_conf(mut self) -> Self {
        self.0.conf = 0;
        self
    }

    /// The allowed range of a `set_*_bounded` handler.
    pub const fn bounds(mut self, bounds: &'static Bounds) -> Self {
        self.0.post = bounds as *const Bounds as *mut c_void;
        self
    }

    pub const fn build(self) -> ngx_command_t {
        self.0
    }
}

/// A module's directive table: the entries, then nginx's null terminator.
#[macro_export]
macro_rules! directive_table {
    ($vis:vis static mut $name:ident = [$($entry:expr),* $(,)?];) => {
        $vis static mut $name: [::ngx::ffi::ngx_command_t; [$(stringify!($entry)),*].len() + 1] =
            [$($entry.build(),)* ::ngx::ffi::ngx_command_t::empty()];
    };
}

/// The allowed values of a bounded directive, inclusive, and how its error describes them
/// (the words `nginx -t` has always printed for the directive).
pub struct Bounds {
    pub min: u64,
    pub max: u64,
    pub expected: &'static str,
}

impl Bounds {
    fn check(&self, value: Option<u64>) -> Option<u64> {
        value.filter(|v| (self.min..=self.max).contains(v))
    }
}

/// What a `set_*_bounded` handler reads: the argument, and its range and field.
///
/// # Safety
/// `cf`, `cmd` and `conf` are what nginx passes to a directive declared with
/// `Directive::bounds` and an `offset` of a `usize` field of `conf`.
unsafe fn bounded<'a>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> (ngx_str_t, &'a ngx_command_t, &'a Bounds, &'a mut usize) {
    // SAFETY: (caller) all are valid during the call; `post` is the 'static Bounds the table
    // names and `offset` a usize field of the configuration nginx passes.
    unsafe {
        let cmd = &*cmd;
        let field = &mut *((conf as *mut u8).add(cmd.offset) as *mut usize);
        (
            conf_args(&*cf)[1],
            cmd,
            &*(cmd.post as *const Bounds),
            field,
        )
    }
}

/// Stores a checked value, or fails the directive naming what was allowed.
fn store(
    cf: *mut ngx_conf_t,
    cmd: &ngx_command_t,
    bounds: &Bounds,
    field: &mut usize,
    arg: ngx_str_t,
    value: Option<u64>,
) -> *mut c_char {
    if *field != usize::UNSET {
        return conf_error(cf, cmd, "is duplicate");
    }
    match bounds.check(value) {
        Some(v) => {
            *field = v as usize;
            CONF_OK
        }
        None => {
            let message = format!(
                "{} (not \"{}\")",
                bounds.expected,
                String::from_utf8_lossy(str_bytes(&arg))
            );
            conf_error(cf, cmd, &message)
        }
    }
}

/// A time in milliseconds within `Bounds`, into an `Unset<ngx_msec_t>` (or marker) field.
pub unsafe extern "C" fn set_msec_bounded(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a directive declared as `bounded` requires.
    let (mut arg, cmd, bounds, field) = unsafe { bounded(cf, cmd, conf) };
    let text = arg;
    // SAFETY: parses the argument string nginx owns; `0`: the value is in milliseconds.
    let ms = unsafe { ngx::ffi::ngx_parse_time(&mut arg, 0) };
    store(cf, cmd, bounds, field, text, u64::try_from(ms).ok())
}

/// A size in bytes within `Bounds`, into an `Unset<usize>` (or marker) field.
pub unsafe extern "C" fn set_size_bounded(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a directive declared as `bounded` requires.
    let (mut arg, cmd, bounds, field) = unsafe { bounded(cf, cmd, conf) };
    let text = arg;
    // SAFETY: parses the argument string nginx owns.
    let size = unsafe { ngx::ffi::ngx_parse_size(&mut arg) };
    store(cf, cmd, bounds, field, text, u64::try_from(size).ok())
}

/// A decimal number within `Bounds`, into an `Unset<usize>` (or marker) field.
pub unsafe extern "C" fn set_number_bounded(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a directive declared as `bounded` requires.
    let (arg, cmd, bounds, field) = unsafe { bounded(cf, cmd, conf) };
    let value = core::str::from_utf8(str_bytes(&arg))
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    store(cf, cmd, bounds, field, arg, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_takes_own_then_parent_then_default() {
        let mut own = Unset::<usize>::default();
        own.set(3);
        own.merge(Unset::default(), 9);
        assert_eq!(own.get(), Some(3));

        let mut parent = Unset::<usize>::default();
        parent.set(5);
        let mut child = Unset::default();
        child.merge(parent, 9);
        assert_eq!(child.get(), Some(5));

        let mut neither = Unset::<isize>::default();
        assert!(!neither.is_set());
        neither.merge(Unset::default(), 0);
        assert_eq!(neither.get(), Some(0));
    }

    #[test]
    fn unset_is_nginx_marker() {
        // nginx's slot setters test the raw field against these values.
        assert_eq!(Unset::<usize>::default().0, usize::MAX);
        assert_eq!(Unset::<isize>::default().0, -1);
        assert_eq!(<*mut u8>::UNSET as usize, usize::MAX);
    }

    #[test]
    fn inherit_keeps_own() {
        let mut a = Some(1);
        inherit(&mut a, &Some(2));
        assert_eq!(a, Some(1));
        let mut b = None;
        inherit(&mut b, &Some(2));
        assert_eq!(b, Some(2));
    }

    #[test]
    fn bounds_are_inclusive() {
        let b = Bounds {
            min: 1,
            max: 10,
            expected: "",
        };
        assert_eq!(b.check(Some(1)), Some(1));
        assert_eq!(b.check(Some(10)), Some(10));
        assert_eq!(b.check(Some(0)), None);
        assert_eq!(b.check(Some(11)), None);
        assert_eq!(b.check(None), None);
    }
}
