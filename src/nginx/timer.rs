//! A timer event with its data, owned: `Timer<T>` boxes an nginx event next to a `T`, so the
//! event's handler finds the data from the event, and dropping the timer takes the event out
//! of nginx's timer tree and posted queue (no handler can run on freed memory).

use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_delete_posted_event, ngx_event_t, ngx_log_t, ngx_msec_t,
};

use super::util::no_connection;

/// The handler nginx calls when the timer fires.
pub type Handler = unsafe extern "C" fn(*mut ngx_event_t);

#[repr(C)]
struct Inner<T> {
    /// First, so the event's address is the Inner's.
    ev: ngx_event_t,
    data: T,
}

/// A timer event and its data, at a fixed address until dropped.
pub struct Timer<T> {
    inner: Box<Inner<T>>,
}

impl<T> Timer<T> {
    /// A timer that calls `handler` when it fires; `cancelable`: a worker shutting down does
    /// not wait for it.
    pub fn new(data: T, handler: Handler, log: *mut ngx_log_t, cancelable: bool) -> Self {
        let mut inner = Box::new(Inner {
            // SAFETY: a zeroed event is nginx's initial state for one.
            ev: unsafe { core::mem::zeroed() },
            data,
        });
        inner.ev.handler = Some(handler);
        inner.ev.data = no_connection();
        inner.ev.log = log;
        inner.ev.set_cancelable(u32::from(cancelable));
        Timer { inner }
    }

    /// Fires in `ms` (at least 1), replacing an earlier arming.
    pub fn arm(&mut self, ms: u64) {
        // SAFETY: the event lives in the box, whose drop deletes the timer first.
        unsafe { ngx_add_timer(&mut self.inner.ev, ms.max(1) as ngx_msec_t) };
    }

    /// Whether the timer is armed and has not fired.
    pub fn is_armed(&self) -> bool {
        self.inner.ev.timer_set() != 0
    }

    /// Stops the timer if armed.
    pub fn disarm(&mut self) {
        if self.is_armed() {
            // SAFETY: the event is in the timer tree (timer_set).
            unsafe { ngx_del_timer(&mut self.inner.ev) };
        }
    }

    /// Changes the log lines of the handler go to.
    pub fn set_log(&mut self, log: *mut ngx_log_t) {
        self.inner.ev.log = log;
    }

    pub fn data_mut(&mut self) -> &mut T {
        &mut self.inner.data
    }

    /// The data of the timer whose event `ev` is, from its handler.
    ///
    /// # Safety
    /// `ev` must be the event of a live `Timer<T>` (of this `T`), and nothing else may
    /// borrow that timer's data while the returned reference lives.
    pub unsafe fn data_of<'a>(ev: *mut ngx_event_t) -> &'a mut T {
        // SAFETY: (caller) the event is the first field of a live #[repr(C)] Inner<T>.
        unsafe { &mut (*(ev as *mut Inner<T>)).data }
    }
}

impl<T> Drop for Timer<T> {
    fn drop(&mut self) {
        self.disarm();
        if self.inner.ev.posted() != 0 {
            // SAFETY: the event is in the posted queue (posted).
            unsafe { ngx_delete_posted_event(&mut self.inner.ev) };
        }
    }
}
