//! A session's live feed: its outlet in the hub (one board, several, or every board), removed
//! from the hub when the feed is dropped.
use std::ops::Deref;
use std::sync::Arc;

use crate::fanout::hub::Hub;
use crate::fanout::outlet::Outlet;

/// The live feed of a session. Dropping it unsubscribes it and takes its socket back from the hub.
pub struct Feed {
    outlet: Arc<Outlet>,
    hub: Arc<Hub>,
    boards: Vec<i64>,
}

impl Feed {
    /// Subscribes `user`'s socket to `boards` (every board when empty), with compressed frames
    /// when `deflate`; also returns the latest seq the hub knew of each board at that instant.
    pub fn new(
        hub: &Arc<Hub>,
        boards: &[i64],
        deflate: bool,
        user: Option<i64>,
    ) -> (Feed, Vec<(i64, Option<i64>)>) {
        let outlet = hub.outlet(deflate, user);
        let known = hub.add(&outlet, boards);
        let feed = Feed {
            outlet,
            hub: hub.clone(),
            boards: boards.to_vec(),
        };
        (feed, known)
    }
}

impl Deref for Feed {
    type Target = Outlet;

    fn deref(&self) -> &Outlet {
        &self.outlet
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.hub.remove(&self.outlet, &self.boards);
        self.outlet.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::delivery::Delivery;
    use crate::fanout::outlet::Lagged;

    #[test]
    fn a_feed_falling_behind_is_told_so() {
        for boards in [vec![1], vec![1, 2], vec![]] {
            let hub = Arc::new(Hub::new(2));
            let (feed, _) = Feed::new(&hub, &boards, false, None);
            for seq in 1..=5 {
                hub.publish(Delivery::new(1, seq, b"{}"));
            }
            assert_eq!(
                feed.try_recv().map(|d| d.map(|d| d.seq)),
                Err(Lagged),
                "{boards:?}"
            );
        }
    }

    #[test]
    fn dropping_a_feed_frees_its_boards() {
        let hub = Arc::new(Hub::new(2));
        let (a, _) = Feed::new(&hub, &[1, 2], false, None);
        let (b, _) = Feed::new(&hub, &[2], false, None);
        let (all, _) = Feed::new(&hub, &[], false, None);
        assert_eq!(hub.board_count(), 2);
        drop(a);
        assert_eq!(hub.board_count(), 1, "board 2 is still watched");
        drop(b);
        assert_eq!(hub.board_count(), 0);
        assert!(hub.has_all_boards_subscribers());
        drop(all);
        assert!(!hub.has_all_boards_subscribers());
    }
}
