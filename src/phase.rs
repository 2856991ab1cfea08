//! Where a request stands in the stale layer's state machine, with what it holds there: a
//! phase carries the values that only mean something in it (the fill lock while filling, the
//! refresh lock and slot while the fleet lease is asked, the prepared refresh until it is
//! sent), so a lock held in a phase that cannot use it is not representable.
//!
//! Pure and generic over what is held (`F`: the fill lock, `R`: the refresh lock and slot,
//! `P`: a prepared refresh, `W`: a parked request's wake-up event), so the transitions are unit-tested here with stand-ins; the
//! request's state (`stale::state`) instantiates it with the real guards, whose `Drop`
//! releases what a transition leaves behind as abandoned.

/// The phase a request is in, without its data: what the driver's step loop matches on.
/// (Declared in `Stage`'s order: `Stage::phase` then compiles to reading the tag.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// The fleet lease is asked before a fill; the fill lock is held.
    LeaseFillAsk,
    /// Another node fills under the lease: waiting for the next poll, the fill lock held.
    LeasePoll,
    /// The fleet lease is asked before a refresh; its lock and slot are held.
    LeaseRefreshAsk,
    /// A lease operation request of this nginx waiting for the location's answer.
    LeaseOpAsk,
    /// Not looked at yet.
    Start,
    /// Waiting for the TTL lookup's answer.
    LookingUp,
    /// Reading the body the refresh will replay (before any lock is taken).
    ReadingBody,
    /// The body is whole: only now may the request take a lock.
    BodyRead,
    /// Waiting for the PERSIST/EXPIRE of a stale key; the refresh is prepared.
    Persisting,
    /// Waiting for another request's fill.
    Waiting,
    /// srcache missed an entry the layer expected: take the fill lock or wait for its holder.
    Missed,
    /// The layer is done; the request goes to the backend holding the key's fill lock.
    Filling,
    /// The layer is done with a stale hit; its prepared refresh is sent at the next step.
    Refreshing,
    /// The layer is done; the request is sent through its location again (posted), so
    /// srcache fetches the entry a fill stored after srcache missed it.
    Refetching,
    /// The layer is done with the request: srcache and the backend take over.
    Done,
}

/// A phase with its data. (An explicit tag: the fresh-hit path reads it a few times, and a
/// byte compare is cheaper than decoding a niche in the fill lock.)
#[derive(Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage<F, R, P, W> {
    /// The lease is asked before a fill: the fill lock is held meanwhile.
    LeaseForFill {
        lock: F,
    },
    /// Another node fills under the lease: polled, the fill lock held meanwhile.
    LeasePoll {
        lock: F,
    },
    /// The lease is asked before a refresh: its lock and slot are held meanwhile.
    LeaseForRefresh {
        hold: R,
    },
    /// A lease operation request of this nginx to itself (holds nothing).
    LeaseOp,
    Start,
    LookingUp,
    ReadingBody,
    BodyRead,
    Persisting {
        refresh: P,
    },
    /// Parked behind the fill lock's holder: woken by its release, or out of time.
    Waiting {
        wait: W,
    },
    Missed,
    Filling {
        lock: F,
    },
    Refreshing {
        refresh: P,
    },
    /// The redirect is posted on `wait`'s event.
    Refetching {
        wait: W,
    },
    Done,
}

impl<F, R, P, W> Stage<F, R, P, W> {
    #[inline]
    pub fn phase(&self) -> Phase {
        match self {
            Stage::Start => Phase::Start,
            Stage::LookingUp => Phase::LookingUp,
            Stage::ReadingBody => Phase::ReadingBody,
            Stage::BodyRead => Phase::BodyRead,
            Stage::Persisting { .. } => Phase::Persisting,
            Stage::Waiting { .. } => Phase::Waiting,
            Stage::Missed => Phase::Missed,
            Stage::LeaseForFill { .. } => Phase::LeaseFillAsk,
            Stage::LeasePoll { .. } => Phase::LeasePoll,
            Stage::LeaseForRefresh { .. } => Phase::LeaseRefreshAsk,
            Stage::LeaseOp => Phase::LeaseOpAsk,
            Stage::Filling { .. } => Phase::Filling,
            Stage::Refreshing { .. } => Phase::Refreshing,
            Stage::Refetching { .. } => Phase::Refetching,
            Stage::Done => Phase::Done,
        }
    }

    fn take(&mut self) -> Self {
        core::mem::replace(self, Stage::Done)
    }

    /// Moves to `next` from a stage that holds nothing (just taken, or a unit variant), so
    /// no drop code runs: these transitions are on every fresh hit's path.
    fn leave_empty(&mut self, next: Self) {
        core::mem::forget(core::mem::replace(self, next));
    }

    /// The layer is done with the request. A fill lock goes on with it (to the backend, its
    /// end completes it with the outcome), as does a prepared refresh (sent at the next
    /// step); a refresh lock whose refresh was never prepared is given back (by its drop).
    #[inline(always)]
    pub fn done(&mut self) {
        if let Stage::Start | Stage::LookingUp | Stage::Missed = self {
            // The fast path (a fresh hit's): a unit variant holds nothing.
            self.leave_empty(Stage::Done);
        } else {
            self.done_holding();
        }
    }

    fn done_holding(&mut self) {
        match self {
            // (The posted redirect still has to run.)
            Stage::Filling { .. } | Stage::Refreshing { .. } | Stage::Refetching { .. } => {}
            Stage::Done => {}
            // (Unit variants: they hold nothing.)
            Stage::Start
            | Stage::LookingUp
            | Stage::ReadingBody
            | Stage::BodyRead
            | Stage::Missed
            | Stage::LeaseOp => self.leave_empty(Stage::Done),
            // The wait is over (its drop stops whatever is left of it).
            Stage::Waiting { .. } => *self = Stage::Done,
            Stage::LeaseForFill { .. } | Stage::LeasePoll { .. } | Stage::Persisting { .. } => {
                let next = match self.take() {
                    Stage::LeaseForFill { lock } | Stage::LeasePoll { lock } => {
                        Stage::Filling { lock }
                    }
                    Stage::Persisting { refresh } => Stage::Refreshing { refresh },
                    _ => unreachable!("matched above"),
                };
                self.leave_empty(next);
            }
            // The refresh lock and slot are given back.
            Stage::LeaseForRefresh { .. } => *self = Stage::Done,
        }
    }

    /// Another node fills: this request polls the lease, keeping its fill lock.
    pub fn poll_lease(&mut self) {
        if let Stage::LeaseForFill { .. } = self {
            if let Stage::LeaseForFill { lock } = self.take() {
                self.leave_empty(Stage::LeasePoll { lock });
            }
        }
    }

    /// The poll is sent: waiting for its answer, keeping the fill lock.
    pub fn ask_lease_again(&mut self) {
        if let Stage::LeasePoll { .. } = self {
            if let Stage::LeasePoll { lock } = self.take() {
                self.leave_empty(Stage::LeaseForFill { lock });
            }
        }
    }

    /// The body being read is whole.
    pub fn body_read(&mut self) {
        if let Stage::ReadingBody = self {
            self.leave_empty(Stage::BodyRead);
        }
    }

    /// The parked request's wait (waiting for a fill, or a posted refetch).
    pub fn wait(&self) -> Option<&W> {
        match self {
            Stage::Waiting { wait } | Stage::Refetching { wait } => Some(wait),
            _ => None,
        }
    }

    /// The wait of a request woken (or out of time), to wait again with it.
    pub fn take_wait(&mut self) -> Option<W> {
        if !matches!(self, Stage::Waiting { .. }) {
            return None;
        }
        match self.take() {
            Stage::Waiting { wait } => Some(wait),
            _ => unreachable!("waiting"),
        }
    }

    /// The fill lock, held while filling or asking the lease for the fill.
    pub fn fill_lock(&self) -> Option<&F> {
        match self {
            Stage::Filling { lock } | Stage::LeaseForFill { lock } | Stage::LeasePoll { lock } => {
                Some(lock)
            }
            _ => None,
        }
    }

    /// Takes the fill lock out, to complete it with its outcome; the layer is then done.
    pub fn take_fill(&mut self) -> Option<F> {
        self.fill_lock()?;
        match self.take() {
            Stage::Filling { lock } | Stage::LeaseForFill { lock } | Stage::LeasePoll { lock } => {
                Some(lock)
            }
            _ => unreachable!("a fill lock is held"),
        }
    }

    /// The refresh lock and slot held while the lease is asked.
    pub fn refresh_hold(&self) -> Option<&R> {
        match self {
            Stage::LeaseForRefresh { hold } => Some(hold),
            _ => None,
        }
    }

    /// Takes the refresh lock and slot out, to prepare the refresh or hand the lock over;
    /// the layer is then done.
    pub fn take_refresh_hold(&mut self) -> Option<R> {
        self.refresh_hold()?;
        match self.take() {
            Stage::LeaseForRefresh { hold } => Some(hold),
            _ => unreachable!("a refresh lock is held"),
        }
    }

    /// The prepared refresh, to send: the layer is then done.
    pub fn take_refresh(&mut self) -> Option<P> {
        if !matches!(self, Stage::Refreshing { .. }) {
            return None;
        }
        match self.take() {
            Stage::Refreshing { refresh } => Some(refresh),
            _ => unreachable!("a prepared refresh"),
        }
    }

    /// The PERSIST/EXPIRE answered: the refresh is sent at the next step.
    pub fn persisted(&mut self) {
        self.done();
    }

    /// Whether the stage holds a value (a lock, a slot, a refresh) that its drop releases.
    #[inline]
    pub fn holds_anything(&self) -> bool {
        matches!(
            self,
            Stage::LeaseForFill { .. }
                | Stage::LeasePoll { .. }
                | Stage::LeaseForRefresh { .. }
                | Stage::Persisting { .. }
                | Stage::Filling { .. }
                | Stage::Refreshing { .. }
                | Stage::Waiting { .. }
                | Stage::Refetching { .. }
        )
    }

    /// What is left when the request ends: its fill lock and its unsent refresh. Anything
    /// else is dropped now (released as abandoned; a wait stops).
    pub fn take_end(&mut self) -> (Option<F>, Option<P>) {
        if !self.holds_anything() {
            return (None, None);
        }
        match self.take() {
            Stage::Filling { lock } | Stage::LeaseForFill { lock } | Stage::LeasePoll { lock } => {
                (Some(lock), None)
            }
            Stage::Persisting { refresh } | Stage::Refreshing { refresh } => (None, Some(refresh)),
            _ => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type S = Stage<&'static str, u8, u16, u32>;

    #[test]
    fn phases_of_the_stages() {
        assert_eq!(S::LeaseForFill { lock: "f" }.phase(), Phase::LeaseFillAsk);
        assert_eq!(
            S::LeaseForRefresh { hold: 1 }.phase(),
            Phase::LeaseRefreshAsk
        );
        assert_eq!(S::LeaseOp.phase(), Phase::LeaseOpAsk);
        assert_eq!(S::Filling { lock: "f" }.phase(), Phase::Filling);
        assert_eq!(S::Persisting { refresh: 2 }.phase(), Phase::Persisting);
        assert_eq!(S::Refreshing { refresh: 2 }.phase(), Phase::Refreshing);
        assert_eq!(S::Waiting { wait: 4 }.phase(), Phase::Waiting);
        assert_eq!(S::Refetching { wait: 4 }.phase(), Phase::Refetching);
    }

    /// `Phase` is declared in `Stage`'s order, so `phase` is the tag itself (a fresh hit
    /// reads it on every step).
    #[test]
    fn the_phase_is_the_tag() {
        let all = [
            S::LeaseForFill { lock: "f" },
            S::LeasePoll { lock: "f" },
            S::LeaseForRefresh { hold: 1 },
            S::LeaseOp,
            S::Start,
            S::LookingUp,
            S::ReadingBody,
            S::BodyRead,
            S::Persisting { refresh: 2 },
            S::Waiting { wait: 3 },
            S::Missed,
            S::Filling { lock: "f" },
            S::Refreshing { refresh: 2 },
            S::Refetching { wait: 3 },
            S::Done,
        ];
        for (i, s) in all.iter().enumerate() {
            // SAFETY: a `#[repr(u8)]` enum starts with its `u8` tag.
            let tag = unsafe { *(s as *const S as *const u8) };
            assert_eq!(tag as usize, i);
            assert_eq!(s.phase() as usize, i, "{s:?}");
        }
    }

    #[test]
    fn done_keeps_the_fill_lock_and_the_prepared_refresh() {
        let mut s = S::LeaseForFill { lock: "f" };
        s.done();
        assert_eq!(s, S::Filling { lock: "f" });
        s.done();
        assert_eq!(s, S::Filling { lock: "f" });
        let mut s = S::Persisting { refresh: 7 };
        s.persisted();
        assert_eq!(s, S::Refreshing { refresh: 7 });
        for mut s in [
            S::Waiting { wait: 4 },
            S::LookingUp,
            S::Missed,
            S::LeaseOp,
            S::Start,
        ] {
            s.done();
            assert_eq!(s, S::Done);
        }
    }

    #[test]
    fn done_gives_back_a_refresh_lock_never_prepared() {
        use std::cell::Cell;
        use std::rc::Rc;
        struct Hold(Rc<Cell<bool>>);
        impl Drop for Hold {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let released = Rc::new(Cell::new(false));
        let mut s: Stage<(), Hold, (), ()> = Stage::LeaseForRefresh {
            hold: Hold(released.clone()),
        };
        s.done();
        assert!(released.get());
        assert!(matches!(s, Stage::Done));
    }

    #[test]
    fn polling_the_lease_keeps_the_fill_lock() {
        let mut s = S::LeaseForFill { lock: "f" };
        s.poll_lease();
        assert_eq!(s, S::LeasePoll { lock: "f" });
        assert_eq!(s.phase(), Phase::LeasePoll);
        assert_eq!(s.fill_lock(), Some(&"f"));
        s.ask_lease_again();
        assert_eq!(s, S::LeaseForFill { lock: "f" });
        s.poll_lease();
        s.done();
        assert_eq!(s, S::Filling { lock: "f" });
        // Nothing to poll for without a fill lock.
        let mut s = S::LeaseForRefresh { hold: 1 };
        s.poll_lease();
        assert_eq!(s, S::LeaseForRefresh { hold: 1 });
        assert_eq!(S::LeasePoll { lock: "f" }.take_end(), (Some("f"), None));
    }

    #[test]
    fn a_wait_ends_with_the_layer_a_posted_refetch_does_not() {
        let mut s = S::Waiting { wait: 4 };
        assert_eq!(s.wait(), Some(&4));
        assert!(s.holds_anything());
        s.done();
        assert_eq!(s, S::Done);
        let mut s = S::Waiting { wait: 4 };
        // Woken: the same wait serves the next one.
        assert_eq!(s.take_wait(), Some(4));
        assert_eq!(s, S::Done);
        let mut s = S::Refetching { wait: 5 };
        assert_eq!(s.take_wait(), None);
        assert_eq!(s.wait(), Some(&5));
        s.done();
        assert_eq!(s, S::Refetching { wait: 5 });
        assert_eq!(s.take_end(), (None, None));
        assert_eq!(s, S::Done);
    }

    #[test]
    fn the_body_is_read_once_reading() {
        let mut s = S::ReadingBody;
        s.body_read();
        assert_eq!(s.phase(), Phase::BodyRead);
        let mut s = S::Done;
        s.body_read();
        assert_eq!(s, S::Done);
    }

    #[test]
    fn taking_the_fill_lock_ends_the_layer() {
        let mut s = S::LeaseForFill { lock: "f" };
        assert_eq!(s.fill_lock(), Some(&"f"));
        assert_eq!(s.take_fill(), Some("f"));
        assert_eq!(s, S::Done);
        assert_eq!(s.take_fill(), None);
        let mut s = S::Waiting { wait: 4 };
        assert_eq!(s.take_fill(), None);
        assert_eq!(s, S::Waiting { wait: 4 });
        assert_eq!(s.fill_lock(), None);
    }

    #[test]
    fn the_refresh_hold_only_while_the_lease_is_asked() {
        let mut s = S::LeaseForRefresh { hold: 3 };
        assert_eq!(s.refresh_hold(), Some(&3));
        assert_eq!(s.fill_lock(), None);
        assert_eq!(s.take_refresh_hold(), Some(3));
        assert_eq!(s, S::Done);
        let mut s = S::LeaseForFill { lock: "f" };
        assert_eq!(s.take_refresh_hold(), None);
        assert_eq!(s, S::LeaseForFill { lock: "f" });
    }

    #[test]
    fn the_prepared_refresh_is_taken_once_the_copy_is_kept() {
        let mut s = S::Persisting { refresh: 9 };
        // Not before the PERSIST/EXPIRE answered.
        assert_eq!(s.take_refresh(), None);
        s.persisted();
        assert_eq!(s.take_refresh(), Some(9));
        assert_eq!(s, S::Done);
        assert_eq!(s.take_refresh(), None);
    }

    #[test]
    fn the_end_takes_the_fill_lock_or_the_unsent_refresh() {
        assert_eq!(S::Filling { lock: "f" }.take_end(), (Some("f"), None));
        assert_eq!(S::LeaseForFill { lock: "f" }.take_end(), (Some("f"), None));
        assert_eq!(S::Persisting { refresh: 1 }.take_end(), (None, Some(1)));
        assert_eq!(S::Refreshing { refresh: 1 }.take_end(), (None, Some(1)));
        assert_eq!(S::LeaseForRefresh { hold: 1 }.take_end(), (None, None));
        for s in [
            S::Start,
            S::LookingUp,
            S::ReadingBody,
            S::Missed,
            S::LeaseOp,
            S::Done,
        ] {
            assert!(!s.holds_anything());
        }
        assert!(S::LeaseForRefresh { hold: 1 }.holds_anything());
        let mut s = S::Filling { lock: "f" };
        s.take_end();
        assert_eq!(s, S::Done);
    }
}
