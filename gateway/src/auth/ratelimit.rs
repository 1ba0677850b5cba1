//! Rate limits: token buckets (GCRA, `governor`) per client address on every API call and
//! WebSocket attempt, and per user on writes and on WebSocket connects and resumes. The service
//! role is exempt (a trusted backend; the load suite uses it). A refusal is 429 with
//! `Retry-After`, counted in `taskboard_rate_limited_total{limit}`.
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{header, HeaderValue, StatusCode};

use crate::auth::Principal;
use crate::error::ApiError;

/// A rate per second and the burst (bucket size) above it; rate 0 = no limit.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let per_sec = NonZeroU32::new(self.per_sec)?;
        let burst = NonZeroU32::new(self.burst.max(self.per_sec)).unwrap_or(per_sec);
        Some(Quota::per_second(per_sec).allow_burst(burst))
    }
}

/// What is being limited (the metric's label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Every API call and WebSocket attempt from one client address.
    Address,
    /// Creates, updates and deletes of one user.
    UserWrites,
    /// WebSocket connects (resumes included) of one user.
    UserConnects,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::Address => "address",
            Limit::UserWrites => "user_writes",
            Limit::UserConnects => "user_connects",
        }
    }
}

/// The limiters; cheap checks (one hash-map entry per key).
pub struct RateLimits {
    address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    writes: Option<DefaultKeyedRateLimiter<i64>>,
    connects: Option<DefaultKeyedRateLimiter<i64>>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(address: Rate, writes: Rate, connects: Rate) -> Self {
        RateLimits {
            address: address.quota().map(DefaultKeyedRateLimiter::keyed),
            writes: writes.quota().map(DefaultKeyedRateLimiter::keyed),
            connects: connects.quota().map(DefaultKeyedRateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    /// One call or attempt from `ip`.
    ///
    /// # Errors
    /// 429 when the address is over its rate.
    pub fn address(&self, ip: IpAddr, who: Option<&Principal>) -> Result<(), ApiError> {
        if who.is_some_and(|p| p.service) {
            return Ok(());
        }
        self.check(self.address.as_ref(), &ip.to_canonical(), Limit::Address)
    }

    /// One write (`Limit::UserWrites`) or WebSocket connect (`Limit::UserConnects`) of `who`.
    ///
    /// # Errors
    /// 429 when the user is over their rate.
    pub fn user(&self, who: Option<&Principal>, limit: Limit) -> Result<(), ApiError> {
        let Some(p) = who.filter(|p| !p.service) else {
            return Ok(());
        };
        let limiter = match limit {
            Limit::UserWrites => self.writes.as_ref(),
            Limit::UserConnects => self.connects.as_ref(),
            Limit::Address => None,
        };
        self.check(limiter, &p.user, limit)
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: Option<&DefaultKeyedRateLimiter<K>>,
        key: &K,
        limit: Limit,
    ) -> Result<(), ApiError> {
        let Some(l) = limiter else { return Ok(()) };
        l.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            too_many(limit, wait)
        })
    }

    /// Forgets keys whose buckets are full again (run periodically: memory stays bounded by the
    /// clients of the last few seconds).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.address {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in [&self.writes, &self.connects].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

fn too_many(limit: Limit, wait: Duration) -> ApiError {
    metrics::counter!("taskboard_rate_limited_total", "limit" => limit.label()).increment(1);
    // Whole seconds, rounded up, at least 1.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let what = match limit {
        Limit::Address => "requests from this address",
        Limit::UserWrites => "changes by this user",
        Limit::UserConnects => "WebSocket connections by this user",
    };
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "resource_exhausted",
        "Too many requests",
    )
    .with_message(format!("too many {what}; retry in {} s", secs.max(1)))
    .with_header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, service: bool) -> Principal {
        Principal {
            user: id,
            service,
            expires_at: u64::MAX,
        }
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_with_a_retry_after() {
        let r = RateLimits::new(
            Rate {
                per_sec: 1,
                burst: 3,
            },
            Rate {
                per_sec: 0,
                burst: 0,
            },
            Rate {
                per_sec: 0,
                burst: 0,
            },
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            r.address(ip, None).unwrap();
        }
        let e = r.address(ip, None).unwrap_err();
        assert_eq!(e.status, 429);
        assert!(e
            .headers
            .iter()
            .any(|(k, v)| k == header::RETRY_AFTER && v == "1"));
        // Another address has its own bucket; the service role is not limited.
        r.address("192.0.2.8".parse().unwrap(), None).unwrap();
        r.address(ip, Some(&user(1, true))).unwrap();
        // IPv4-mapped IPv6 is the same client.
        assert!(r
            .address("::ffff:192.0.2.7".parse().unwrap(), None)
            .is_err());
    }

    #[test]
    fn users_have_their_own_buckets_and_zero_means_unlimited() {
        let r = RateLimits::new(
            Rate {
                per_sec: 0,
                burst: 0,
            },
            Rate {
                per_sec: 1,
                burst: 2,
            },
            Rate {
                per_sec: 0,
                burst: 0,
            },
        );
        let (a, b) = (user(1, false), user(2, false));
        r.user(Some(&a), Limit::UserWrites).unwrap();
        r.user(Some(&a), Limit::UserWrites).unwrap();
        assert!(r.user(Some(&a), Limit::UserWrites).is_err());
        r.user(Some(&b), Limit::UserWrites).unwrap();
        for _ in 0..100 {
            r.user(Some(&a), Limit::UserConnects).unwrap();
            r.address("192.0.2.1".parse().unwrap(), None).unwrap();
        }
        r.user(None, Limit::UserWrites).unwrap();
    }
}
