//! Where a request stands in the stale layer's state machine, with what it holds there: a
//! phase carries the values that only mean something in it (the fill lock while filling, the
//! refresh lock and slot while the fleet lease is asked, the prepared refresh until it is
//! sent), so a lock held in a phase that cannot use it is not representable.
//!
//! Pure and generic over what is held (`F`: the fill lock, `R`: the refresh lock and slot,
//! `P`: a prepared refresh), so the transitions are unit-tested here with stand-ins; the
//! request's state (`stale::state`) instantiates it with the real guards, whose `Drop`
//! releases what a transition leaves behind as abandoned.

/// The phase a request is in, without its data: what the driver's step loop matches on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Not looked at yet.
    Start,
    /// Waiting for the TTL lookup's answer.
    LookingUp,
    /// Reading the body the refresh will replay (before any lock is taken).
    ReadingBody,
    /// Waiting for the PERSIST/EXPIRE of a stale key; the refresh is prepared.
    Persisting,
    /// Waiting for another request's fill.
    Waiting,
    /// srcache missed an entry the layer expected: take the fill lock or wait for its holder.
    Missed,
    /// Dealing with the fleet lease: asking for it (holding the fill lock, or the refresh
    /// lock and slot), polling while another node fills, or a lease operation request.
    Lease,
    /// The layer is done; the request goes to the backend holding the key's fill lock.
    Filling,
    /// The layer is done with a stale hit; its prepared refresh is sent at the next step.
    Refreshing,
    /// The layer is done with the request: srcache and the backend take over.
    Done,
}

/// A phase with its data.
#[derive(Debug, PartialEq, Eq)]
pub enum Stage<F, R, P> {
    Start,
    LookingUp,
    ReadingBody,
    Persisting {
        refresh: P,
    },
    Waiting,
    Missed,
    /// The lease is asked before a fill: the fill lock is held meanwhile.
    LeaseForFill {
        lock: F,
    },
    /// The lease is asked before a refresh: its lock and slot are held meanwhile.
    LeaseForRefresh {
        hold: R,
    },
    /// A lease operation request of this nginx to itself (holds nothing).
    LeaseOp,
    Filling {
        lock: F,
    },
    Refreshing {
        refresh: P,
    },
    Done,
}

impl<F, R, P> Stage<F, R, P> {
    pub fn phase(&self) -> Phase {
        match self {
            Stage::Start => Phase::Start,
            Stage::LookingUp => Phase::LookingUp,
            Stage::ReadingBody => Phase::ReadingBody,
            Stage::Persisting { .. } => Phase::Persisting,
            Stage::Waiting => Phase::Waiting,
            Stage::Missed => Phase::Missed,
            Stage::LeaseForFill { .. } | Stage::LeaseForRefresh { .. } | Stage::LeaseOp => {
                Phase::Lease
            }
            Stage::Filling { .. } => Phase::Filling,
            Stage::Refreshing { .. } => Phase::Refreshing,
            Stage::Done => Phase::Done,
        }
    }

    fn take(&mut self) -> Self {
        core::mem::replace(self, Stage::Done)
    }

    /// The layer is done with the request. A fill lock goes on with it (to the backend, its
    /// end completes it with the outcome), as does a prepared refresh (sent at the next
    /// step); a refresh lock whose refresh was never prepared is given back (by its drop).
    pub fn done(&mut self) {
        *self = match self.take() {
            Stage::Filling { lock } | Stage::LeaseForFill { lock } => Stage::Filling { lock },
            Stage::Persisting { refresh } | Stage::Refreshing { refresh } => {
                Stage::Refreshing { refresh }
            }
            _ => Stage::Done,
        };
    }

    /// The fill lock, held while filling or asking the lease for the fill.
    pub fn fill_lock(&self) -> Option<&F> {
        match self {
            Stage::Filling { lock } | Stage::LeaseForFill { lock } => Some(lock),
            _ => None,
        }
    }

    /// Takes the fill lock out, to complete it with its outcome; the layer is then done.
    pub fn take_fill(&mut self) -> Option<F> {
        match self.take() {
            Stage::Filling { lock } | Stage::LeaseForFill { lock } => Some(lock),
            other => {
                *self = other;
                None
            }
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
        match self.take() {
            Stage::LeaseForRefresh { hold } => Some(hold),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The prepared refresh, to send: the layer is then done.
    pub fn take_refresh(&mut self) -> Option<P> {
        match self.take() {
            Stage::Refreshing { refresh } => Some(refresh),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The PERSIST/EXPIRE answered: the refresh is sent at the next step.
    pub fn persisted(&mut self) {
        self.done();
    }

    /// What is left when the request ends: its fill lock and its unsent refresh. Anything
    /// else is dropped (released as abandoned) with the stage.
    pub fn take_end(&mut self) -> (Option<F>, Option<P>) {
        match self.take() {
            Stage::Filling { lock } | Stage::LeaseForFill { lock } => (Some(lock), None),
            Stage::Persisting { refresh } | Stage::Refreshing { refresh } => (None, Some(refresh)),
            _ => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type S = Stage<&'static str, u8, u16>;

    #[test]
    fn phases_of_the_stages() {
        assert_eq!(S::LeaseForFill { lock: "f" }.phase(), Phase::Lease);
        assert_eq!(S::LeaseForRefresh { hold: 1 }.phase(), Phase::Lease);
        assert_eq!(S::LeaseOp.phase(), Phase::Lease);
        assert_eq!(S::Filling { lock: "f" }.phase(), Phase::Filling);
        assert_eq!(S::Persisting { refresh: 2 }.phase(), Phase::Persisting);
        assert_eq!(S::Refreshing { refresh: 2 }.phase(), Phase::Refreshing);
        assert_eq!(S::Waiting.phase(), Phase::Waiting);
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
        for mut s in [S::Waiting, S::LookingUp, S::Missed, S::LeaseOp, S::Start] {
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
        let mut s: Stage<(), Hold, ()> = Stage::LeaseForRefresh {
            hold: Hold(released.clone()),
        };
        s.done();
        assert!(released.get());
        assert!(matches!(s, Stage::Done));
    }

    #[test]
    fn taking_the_fill_lock_ends_the_layer() {
        let mut s = S::LeaseForFill { lock: "f" };
        assert_eq!(s.fill_lock(), Some(&"f"));
        assert_eq!(s.take_fill(), Some("f"));
        assert_eq!(s, S::Done);
        assert_eq!(s.take_fill(), None);
        let mut s = S::Waiting;
        assert_eq!(s.take_fill(), None);
        assert_eq!(s, S::Waiting);
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
        let mut s = S::Filling { lock: "f" };
        s.take_end();
        assert_eq!(s, S::Done);
    }
}
