//! Fair shares of the concurrency limit: a call in progress holds one permit of the server's
//! limit and one of its caller's share, so a caller that holds its whole share (a loop, a leak,
//! an attack) leaves every other caller its own. A caller is its principal; anonymous callers
//! are told apart by their connection, since they all share one principal.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use crate::domain::Principal;

/// Whose share a call draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Sharer {
    /// An authenticated caller.
    Principal(Principal),
    /// An anonymous caller, by the connection it came on.
    Connection(SocketAddr),
}

impl Sharer {
    /// The sharer of a call by `principal` on a connection from `peer`.
    pub(crate) fn of(principal: &Principal, peer: Option<SocketAddr>) -> Self {
        match peer {
            Some(peer) if *principal == Principal::anonymous() => Self::Connection(peer),
            _ => Self::Principal(principal.clone()),
        }
    }
}

/// Which limit a refused call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every caller's calls together.
    Server,
    /// This caller's own share.
    Share,
}

/// The server's limit and each caller's share of it.
#[derive(Debug)]
pub(crate) struct Shares {
    limit: usize,
    share: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    /// Permits held by each sharer; a sharer holding none has no entry, so the map is as
    /// large as the callers with calls in progress, never more.
    by: HashMap<Sharer, usize>,
}

impl Shares {
    /// `limit` calls at most in progress, `share` of them at most by any one caller.
    pub(crate) fn new(limit: usize, share: usize) -> Self {
        Self {
            limit,
            share: share.min(limit),
            held: Mutex::default(),
        }
    }

    /// A permit for one call of `sharer`, held until it is dropped.
    pub(crate) fn try_acquire(self: &Arc<Self>, sharer: Sharer) -> Result<Permit, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.by.get(&sharer).copied().unwrap_or(0);
        if mine >= self.share {
            return Err(Refused::Share);
        }
        if held.total >= self.limit {
            return Err(Refused::Server);
        }
        held.total += 1;
        held.by.insert(sharer.clone(), mine + 1);
        Ok(Permit {
            shares: self.clone(),
            sharer: Some(sharer),
        })
    }

    /// Calls in progress, all callers together.
    pub(crate) fn in_progress(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Callers with calls in progress.
    #[cfg(test)]
    fn sharers(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).by.len()
    }

    fn release(&self, sharer: Sharer) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut mine) = held.by.entry(sharer) {
            if *mine.get() <= 1 {
                mine.remove();
            } else {
                *mine.get_mut() -= 1;
            }
        }
    }
}

/// One call's place in the server's limit and in its caller's share.
#[derive(Debug)]
pub(crate) struct Permit {
    shares: Arc<Shares>,
    sharer: Option<Sharer>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(sharer) = self.sharer.take() {
            self.shares.release(sharer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Sharer {
        Sharer::Principal(Principal::new(name))
    }

    #[test]
    fn a_caller_holding_its_share_leaves_the_others_theirs() {
        let shares = Arc::new(Shares::new(10, 3));
        let greedy: Vec<Permit> = (0..3)
            .map(|_| shares.try_acquire(caller("greedy")).unwrap())
            .collect();
        assert_eq!(
            shares.try_acquire(caller("greedy")).unwrap_err(),
            Refused::Share
        );
        let others: Vec<Permit> = ["a", "b", "c"]
            .iter()
            .flat_map(|name| (0..2).map(|_| shares.try_acquire(caller(name)).unwrap()))
            .collect();
        assert_eq!(shares.in_progress(), 9);
        // The server's limit still holds for everyone together.
        let last = shares.try_acquire(caller("d")).unwrap();
        assert_eq!(
            shares.try_acquire(caller("e")).unwrap_err(),
            Refused::Server
        );
        drop((greedy, others, last));
        assert_eq!((shares.in_progress(), shares.sharers()), (0, 0));
        assert!(shares.try_acquire(caller("greedy")).is_ok());
    }

    #[test]
    fn anonymous_callers_are_told_apart_by_their_connection() {
        let (one, two): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:1001".parse().unwrap(),
        );
        let anonymous = Principal::anonymous();
        assert_eq!(Sharer::of(&anonymous, Some(one)), Sharer::Connection(one));
        assert_ne!(
            Sharer::of(&anonymous, Some(one)),
            Sharer::of(&anonymous, Some(two))
        );
        assert_eq!(
            Sharer::of(&anonymous, None),
            Sharer::Principal(anonymous.clone())
        );
        let named = Principal::new("billing");
        assert_eq!(
            Sharer::of(&named, Some(one)),
            Sharer::of(&named, Some(two)),
            "a principal's calls share one share, whatever connection they take"
        );
        let shares = Arc::new(Shares::new(10, 1));
        let _held = shares
            .try_acquire(Sharer::of(&anonymous, Some(one)))
            .unwrap();
        assert!(
            shares
                .try_acquire(Sharer::of(&anonymous, Some(two)))
                .is_ok()
        );
    }

    #[test]
    fn a_share_above_the_limit_is_the_limit() {
        let shares = Arc::new(Shares::new(2, 50));
        let _a = shares.try_acquire(caller("a")).unwrap();
        let _b = shares.try_acquire(caller("a")).unwrap();
        assert_eq!(shares.try_acquire(caller("a")).unwrap_err(), Refused::Share);
    }
}
