//! A session's live feed: its board receivers from the hub (one, several merged, or every board),
//! which free the hub's channels when dropped, and which report falling behind as `Lagged`.
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::StreamMap;

use crate::hub::{Delivery, Hub};

/// The live feed of a session: one receiver (one board, or all boards) or several boards merged.
/// Dropping it frees the hub's channels that nobody else uses.
pub struct Feed {
    rx: FeedRx,
    // Declared after `rx`, so the receivers are gone when it runs.
    _release: Release,
}

enum FeedRx {
    One(broadcast::Receiver<Delivery>),
    Many(StreamMap<i64, BroadcastStream<Delivery>>),
}

/// Frees a session's board channels in the hub once its receivers are dropped.
struct Release {
    hub: Arc<Hub>,
    boards: Vec<i64>,
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.boards.is_empty() {
            self.hub.release(&self.boards);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum FeedError {
    Lagged,
    Closed,
}

impl Feed {
    /// Subscribes to `boards` (every board when empty); also returns the latest seq the hub knew
    /// of each board at that instant.
    pub fn new(hub: &Arc<Hub>, boards: &[i64]) -> (Feed, Vec<(i64, Option<i64>)>) {
        let mut known = Vec::with_capacity(boards.len());
        let rx = match boards {
            [] => FeedRx::One(hub.subscribe(None)),
            [b] => {
                let (rx, seq) = hub.subscribe_with_seq(Some(*b));
                known.push((*b, seq));
                FeedRx::One(rx)
            }
            many => FeedRx::Many(
                many.iter()
                    .map(|b| {
                        let (rx, seq) = hub.subscribe_with_seq(Some(*b));
                        known.push((*b, seq));
                        (*b, BroadcastStream::new(rx))
                    })
                    .collect(),
            ),
        };
        let feed = Feed {
            rx,
            _release: Release {
                hub: hub.clone(),
                boards: boards.to_vec(),
            },
        };
        (feed, known)
    }

    pub async fn recv(&mut self) -> Result<Delivery, FeedError> {
        match &mut self.rx {
            FeedRx::One(rx) => rx.recv().await.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(_) => FeedError::Lagged,
                broadcast::error::RecvError::Closed => FeedError::Closed,
            }),
            FeedRx::Many(m) => match m.next().await {
                Some((_, Ok(d))) => Ok(d),
                Some((_, Err(BroadcastStreamRecvError::Lagged(_)))) => Err(FeedError::Lagged),
                None => Err(FeedError::Closed),
            },
        }
    }

    /// An event that is already queued, without waiting (`Ok(None)` when there is none). A
    /// receiver that fell behind says so here too: tokio's receiver skips ahead to the oldest
    /// retained event after reporting `Lagged` once, so swallowing it would lose events silently.
    pub fn try_recv(&mut self) -> Result<Option<Delivery>, FeedError> {
        match &mut self.rx {
            FeedRx::One(rx) => match rx.try_recv() {
                Ok(d) => Ok(Some(d)),
                Err(broadcast::error::TryRecvError::Empty) => Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(_)) => Err(FeedError::Lagged),
                Err(broadcast::error::TryRecvError::Closed) => Err(FeedError::Closed),
            },
            FeedRx::Many(m) => match futures_util::FutureExt::now_or_never(m.next()) {
                None => Ok(None),
                Some(Some((_, Ok(d)))) => Ok(Some(d)),
                Some(Some((_, Err(BroadcastStreamRecvError::Lagged(_))))) => Err(FeedError::Lagged),
                Some(None) => Err(FeedError::Closed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lagged_receiver_is_reported_by_try_recv_not_skipped() {
        for boards in [vec![1], vec![1, 2]] {
            let hub = Arc::new(Hub::new(2));
            let (mut feed, _) = Feed::new(&hub, &boards);
            for seq in 1..=5 {
                hub.publish(Delivery::new(1, seq, b"{}"));
            }
            assert_eq!(
                feed.try_recv().map(|d| d.map(|d| d.seq)),
                Err(FeedError::Lagged),
                "{boards:?}"
            );
        }
    }

    #[test]
    fn dropping_a_feed_frees_its_board_channels() {
        let hub = Arc::new(Hub::new(2));
        let (a, _) = Feed::new(&hub, &[1, 2]);
        let (b, _) = Feed::new(&hub, &[2]);
        assert_eq!(hub.board_count(), 2);
        drop(a);
        assert_eq!(hub.board_count(), 1, "board 2 is still watched");
        drop(b);
        assert_eq!(hub.board_count(), 0);
    }
}
