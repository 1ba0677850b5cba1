//! Replay reads: pages of a board's log for resuming WebSockets, at most `MAX_REPLAYS` in flight,
//! and one read shared by every resumer that needs the same page at the same time (a crowd that
//! resumes one board after a deploy costs one read per page, not one per client).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use taskboard_proto::v1;
use tokio::sync::Semaphore;

/// At most this many events per replay page...
pub const REPLAY_PAGE: i32 = 100;
/// ...and at most this many bytes of payload: a client that stops reading during a replay holds at
/// most one page.
pub const REPLAY_PAGE_BYTES: i32 = 256 * 1024;

/// A page, shared by everyone who asked for it while it was read.
pub type Page = Arc<v1::ListEventsResponse>;
type Read = Shared<BoxFuture<'static, Result<Page, tonic::Status>>>;
/// Reads the page of `board` after `after_seq`.
type Fetch = Box<
    dyn Fn(i64, i64) -> BoxFuture<'static, Result<v1::ListEventsResponse, tonic::Status>>
        + Send
        + Sync,
>;

/// The replay reads of one gateway.
pub struct ReplayReads {
    fetch: Fetch,
    permits: Arc<Semaphore>,
    in_flight: Mutex<HashMap<(i64, i64), Read>>,
}

impl ReplayReads {
    /// Reads through the task service, at most `max_in_flight` at once.
    pub fn new(tasks: crate::upstream::client::TasksClient, max_in_flight: usize) -> Self {
        Self::with_fetch(
            Box::new(move |board, after| {
                let tasks = tasks.clone();
                async move {
                    tasks
                        .list_events(board, after, REPLAY_PAGE, REPLAY_PAGE_BYTES)
                        .await
                }
                .boxed()
            }),
            max_in_flight,
        )
    }

    fn with_fetch(fetch: Fetch, max_in_flight: usize) -> Self {
        ReplayReads {
            fetch,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The page of `board` after `after_seq`: joins a read of the same page already in flight,
    /// else starts one (waiting for a permit).
    ///
    /// # Errors
    /// The task service's answer.
    pub async fn page(&self, board: i64, after_seq: i64) -> Result<Page, tonic::Status> {
        let key = (board, after_seq);
        let read = {
            let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match m.get(&key) {
                Some(r) => {
                    metrics::counter!("taskboard_replay_reads_shared_total").increment(1);
                    r.clone()
                }
                None => {
                    let permits = self.permits.clone();
                    let fetch = (self.fetch)(board, after_seq);
                    let r = async move {
                        let _permit = permits
                            .acquire_owned()
                            .await
                            .map_err(|_| tonic::Status::unavailable("shutting down"))?;
                        fetch.await.map(Arc::new)
                    }
                    .boxed()
                    .shared();
                    m.insert(key, r.clone());
                    r
                }
            }
        };
        let result = read.clone().await;
        // The first one back forgets the read (a later asker reads afresh).
        let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&key).is_some_and(|r| r.ptr_eq(&read)) {
            m.remove(&key);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_resumers_of_one_page_share_one_read() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let reads = {
            let (calls, gate) = (calls.clone(), gate.clone());
            Arc::new(ReplayReads::with_fetch(
                Box::new(move |board, after| {
                    let (calls, gate) = (calls.clone(), gate.clone());
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(v1::ListEventsResponse {
                            events: Vec::new(),
                            head_seq: board * 1000 + after,
                            reset: false,
                        })
                    }
                    .boxed()
                }),
                4,
            ))
        };
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let reads = reads.clone();
                tokio::spawn(async move { reads.page(7, 3).await })
            })
            .collect();
        let other = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.page(8, 0).await })
        };
        // Let every waiter join before the reads answer.
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one read per distinct page"
        );
        gate.notify_waiters();
        for w in waiters {
            let page = tokio::time::timeout(Duration::from_secs(5), w).await;
            assert_eq!(page.expect("answered").unwrap().unwrap().head_seq, 7003);
        }
        assert_eq!(other.await.unwrap().unwrap().head_seq, 8000);
        // Done reads are forgotten: the next asker reads afresh.
        let again = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.page(7, 3).await })
        };
        while calls.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        again.await.unwrap().unwrap();
        assert!(reads.in_flight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn reads_wait_for_a_permit() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(AtomicUsize::new(0));
        let reads = {
            let (gate, started) = (gate.clone(), started.clone());
            Arc::new(ReplayReads::with_fetch(
                Box::new(move |_, _| {
                    let (gate, started) = (gate.clone(), started.clone());
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(v1::ListEventsResponse::default())
                    }
                    .boxed()
                }),
                1,
            ))
        };
        let a = tokio::spawn({
            let r = reads.clone();
            async move { r.page(1, 0).await }
        });
        let b = tokio::spawn({
            let r = reads.clone();
            async move { r.page(2, 0).await }
        });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "one read in flight at a time"
        );
        gate.notify_waiters();
        while started.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
    }
}
