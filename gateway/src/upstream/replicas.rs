//! Several task service replicas behind one service: calls go round-robin to the replicas not
//! known to be down, and one whose connection fails is left out for a while.
//!
//! tonic's own balancer (`Channel::balance_list`) keeps choosing a replica that refuses
//! connections: its calls fail at once, so it looks the least loaded. Measured with
//! `scripts/cluster.sh faults --only tasks-kill`: 478 of 3,000 creates refused over the 20 s a
//! killed replica stayed down; this turns that into the calls that were in flight on it plus
//! one probe per [`LEFT_OUT`].
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;

/// How long a replica whose connection failed gets no calls (then one call tries it again).
pub const LEFT_OUT: Duration = Duration::from_secs(2);

/// Replicas of the task service (one is fine: then every call goes to it).
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// Per replica: until when it is left out, in ms since `epoch` (0: it is not).
    out_until: Vec<AtomicU64>,
    epoch: Instant,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next replica in turn that is not left out; if all are, the next in turn anyway.
    fn pick(&self) -> usize {
        let n = self.channels.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.out_until[i].load(Ordering::Relaxed) <= now)
            .unwrap_or(start % n)
    }
}

impl Replicas {
    /// Over `channels` (at least one).
    ///
    /// # Panics
    /// `channels` is empty.
    pub fn new(channels: Vec<Channel>) -> Replicas {
        assert!(!channels.is_empty(), "at least one task service replica");
        let out_until = channels.iter().map(|_| AtomicU64::new(0)).collect();
        Replicas {
            inner: Arc::new(Inner {
                channels,
                next: AtomicUsize::new(0),
                out_until,
                epoch: Instant::now(),
            }),
        }
    }

    /// How many replicas are left out now.
    pub fn left_out(&self) -> usize {
        let now = self.inner.now_ms();
        self.inner
            .out_until
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) > now)
            .count()
    }
}

impl tower::Service<http::Request<Body>> for Replicas {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for its own replica's readiness (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let i = inner.pick();
        let channel = inner.channels[i].clone();
        Box::pin(async move {
            let r = channel.oneshot(req).await;
            if r.is_err() && inner.channels.len() > 1 {
                // No answer at all (refused, reset, timed out): not this replica for a while.
                let until = inner.now_ms() + LEFT_OUT.as_millis() as u64;
                inner.out_until[i].store(until, Ordering::Relaxed);
                tracing::warn!(replica = i, "task service replica failed; left out for 2 s");
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(n: usize) -> Replicas {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        Replicas::new(
            (0..n)
                .map(|i| {
                    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", 1 + i))
                        .unwrap()
                        .connect_lazy()
                })
                .collect(),
        )
    }

    #[test]
    fn calls_take_turns_and_skip_a_replica_that_is_left_out() {
        let r = replicas(3);
        let picks: Vec<usize> = (0..6).map(|_| r.inner.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        r.inner.out_until[1].store(r.inner.now_ms() + 60_000, Ordering::Relaxed);
        assert_eq!(r.left_out(), 1);
        let picks: Vec<usize> = (0..4).map(|_| r.inner.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        // All left out: still one of them, in turn (a call is better than none).
        for t in &r.inner.out_until {
            t.store(r.inner.now_ms() + 60_000, Ordering::Relaxed);
        }
        let _ = r.inner.pick();
    }
}
