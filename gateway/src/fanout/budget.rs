//! The hub's direct-write budget: how long one publish may spend writing frames to parked
//! sessions' sockets itself, a token bucket refilled at a share of wall-clock time.
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The budget refills at 1/DIRECT_SHARE of wall-clock time: sparse events are written to every
/// idle socket by the publisher, while a flood leaves most of the writing to the sessions (on
/// every core, several queued frames per write) instead of serialising it in the one task that
/// reads NATS.
const DIRECT_SHARE: u32 = 4;

/// Time the publisher may still spend writing to sockets itself.
struct Bucket {
    left: Duration,
    at: Instant,
}

/// A bucket of at most `size` (zero: the publisher never writes itself).
pub struct DirectBudget {
    size: Duration,
    bucket: Mutex<Bucket>,
}

impl DirectBudget {
    pub fn new(size: Duration) -> Self {
        DirectBudget {
            size,
            bucket: Mutex::new(Bucket {
                left: size,
                at: Instant::now(),
            }),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What this publish may spend writing to sockets itself: the bucket, refilled at
    /// 1/DIRECT_SHARE of the time since the last publish, up to the size.
    pub fn allowance(&self) -> Duration {
        if self.size.is_zero() {
            return Duration::ZERO;
        }
        let mut b = self.bucket();
        let now = Instant::now();
        b.left = (b.left + (now - b.at) / DIRECT_SHARE).min(self.size);
        b.at = now;
        b.left
    }

    /// Takes what a publish spent out of the bucket.
    pub fn spend(&self, spent: Duration) {
        let mut b = self.bucket();
        b.left = b.left.saturating_sub(spent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_write_budget_is_a_share_of_the_time_that_passes() {
        let size = Duration::from_millis(2);
        let budget = DirectBudget::new(size);
        assert_eq!(budget.allowance(), size, "full at start");
        budget.spend(size);
        assert!(budget.allowance() < size, "spent");
        std::thread::sleep(Duration::from_millis(4));
        assert!(
            budget.allowance() >= Duration::from_millis(1),
            "a quarter of 4 ms came back"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            budget.allowance(),
            size,
            "never more than one event's worth"
        );
        assert_eq!(
            DirectBudget::new(Duration::ZERO).allowance(),
            Duration::ZERO,
            "off"
        );
    }
}
