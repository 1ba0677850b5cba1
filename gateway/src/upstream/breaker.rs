//! The circuit breaker in front of the task service: after a run of calls that got no answer, calls
//! fail fast (503 with `Retry-After`) instead of each waiting for its deadline, and one probe call
//! at a time finds out when the service is back.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Code;

/// Metadata of a refused call's status: the seconds until the breaker lets a call through again
/// (the HTTP answer's `Retry-After`).
pub const RETRY_AFTER_METADATA: &str = "x-taskboard-retry-after";

/// `Retry-After` while a probe call is out (its answer decides).
const WHILE_PROBING: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` in a row got no answer.
    Closed { failures: u32 },
    /// Calls are refused until `until`.
    Open { until: Instant },
    /// One call is out to see whether the service answers again; the others are refused.
    Probing,
}

/// What a call may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Call,
    Probe,
    Refuse(Duration),
}

/// The breaker's state, shared by every clone of the client.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    /// Opens after `threshold` calls in a row without an answer (0: never), for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Arc<Self> {
        metrics::gauge!("taskboard_task_service_circuit_open").set(0.0);
        metrics::counter!("taskboard_task_service_circuit_rejected_total").absolute(0);
        Arc::new(Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold,
            open_for,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value, valid whatever a panicking holder was doing.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Admit::Call,
            State::Open { until } if now >= until => {
                *s = State::Probing;
                Admit::Probe
            }
            State::Open { until } => Admit::Refuse(until - now),
            State::Probing => Admit::Refuse(WHILE_PROBING),
        }
    }

    /// Records the outcome of a call: `answered` unless it got UNAVAILABLE or ran past its
    /// deadline.
    fn record(&self, answered: bool, probe: bool, now: Instant) {
        let mut s = self.lock();
        let before = *s;
        *s = match (before, answered) {
            (State::Closed { failures: 0 }, true) => return,
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 >= self.threshold => State::Open {
                until: now + self.open_for,
            },
            (State::Closed { failures }, false) => State::Closed {
                failures: failures + 1,
            },
            (State::Probing, false) if probe => State::Open {
                until: now + self.open_for,
            },
            // A call let through before the breaker opened, failing late: nothing new.
            (other, false) => other,
        };
        drop(s);
        self.report(before, answered, probe);
    }

    /// Logs and exports a change of state.
    fn report(&self, before: State, answered: bool, probe: bool) {
        let open_ms = self.open_for.as_millis();
        match (before, answered) {
            (State::Open { .. } | State::Probing, true) => {
                metrics::gauge!("taskboard_task_service_circuit_open").set(0.0);
                tracing::info!("task service answers again: circuit closed, calls go through");
            }
            (State::Closed { failures }, false) if failures + 1 >= self.threshold => {
                metrics::gauge!("taskboard_task_service_circuit_open").set(1.0);
                tracing::warn!(
                    failures = failures + 1,
                    open_ms,
                    "task service not answering: circuit open, API calls answer 503 at once; \
                     one probe call after open_ms"
                );
            }
            (State::Probing, false) if probe => {
                tracing::warn!(
                    open_ms,
                    "task service still not answering: circuit stays open"
                );
            }
            _ => {}
        }
    }

    /// A probe that ended without an outcome (its caller went away): the next call probes.
    fn abandon_probe(&self) {
        let mut s = self.lock();
        if *s == State::Probing {
            *s = State::Open {
                until: Instant::now(),
            };
        }
    }

    fn refusal(wait: Duration) -> tonic::Status {
        metrics::counter!("taskboard_task_service_circuit_rejected_total").increment(1);
        let secs = u64::try_from(wait.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1);
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(RETRY_AFTER_METADATA, secs.into());
        tonic::Status::with_metadata(
            Code::Unavailable,
            format!("task service circuit open: not called (retry in {secs} s)"),
            md,
        )
    }
}

/// Whether a call's outcome counts as an answer from the service.
fn answered(code: Code) -> bool {
    !matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// Puts the breaker in front of a gRPC channel.
#[derive(Clone)]
pub struct BreakerLayer(pub Option<Arc<Breaker>>);

impl<S> tower::Layer<S> for BreakerLayer {
    type Service = Breaking<S>;

    fn layer(&self, inner: S) -> Breaking<S> {
        Breaking {
            inner,
            breaker: self.0.clone(),
        }
    }
}

/// A gRPC service whose calls the breaker admits or refuses.
#[derive(Clone)]
pub struct Breaking<S> {
    inner: S,
    breaker: Option<Arc<Breaker>>,
}

/// Releases a probe whose call was dropped before it finished.
struct ProbeGuard(Option<Arc<Breaker>>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.abandon_probe();
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, RB> tower::Service<http::Request<B>> for Breaking<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(breaker) = self.breaker.clone().filter(|b| b.threshold > 0) else {
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        };
        let probe = match breaker.admit(Instant::now()) {
            Admit::Refuse(wait) => {
                let status = Breaker::refusal(wait);
                return Box::pin(async move { Err(Box::new(status) as BoxError) });
            }
            Admit::Probe => true,
            Admit::Call => false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut guard = ProbeGuard(probe.then(|| breaker.clone()));
            let r = fut.await.map_err(Into::into);
            let code = match &r {
                Ok(resp) => taskboard_telemetry::code_of(resp),
                Err(e) => taskboard_telemetry::code_of_error(e.as_ref()),
            };
            guard.0 = None;
            breaker.record(answered(code), probe, Instant::now());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Arc<Breaker> {
        Breaker::new(threshold, Duration::from_secs(2))
    }

    #[test]
    fn opens_after_the_threshold_of_failures_in_a_row_only() {
        let b = breaker(3);
        let t = Instant::now();
        b.record(false, false, t);
        b.record(false, false, t);
        b.record(true, false, t); // an answer resets the run
        b.record(false, false, t);
        b.record(false, false, t);
        assert_eq!(b.admit(t), Admit::Call);
        b.record(false, false, t);
        assert_eq!(b.admit(t), Admit::Refuse(Duration::from_secs(2)));
        assert_eq!(
            b.admit(t + Duration::from_millis(500)),
            Admit::Refuse(Duration::from_millis(1500))
        );
    }

    #[test]
    fn one_probe_at_a_time_after_the_open_time_and_its_outcome_decides() {
        let b = breaker(1);
        let t = Instant::now();
        b.record(false, false, t);
        let later = t + Duration::from_secs(2);
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::Refuse(WHILE_PROBING));
        // A late failure of a call admitted before the breaker opened changes nothing.
        b.record(false, false, later);
        assert_eq!(b.admit(later), Admit::Refuse(WHILE_PROBING));
        // The probe fails: open again for the full time.
        b.record(false, true, later);
        assert_eq!(b.admit(later), Admit::Refuse(Duration::from_secs(2)));
        let again = later + Duration::from_secs(2);
        assert_eq!(b.admit(again), Admit::Probe);
        b.record(true, true, again);
        assert_eq!(b.admit(again), Admit::Call);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let b = breaker(1);
        let t = Instant::now();
        b.record(false, false, t);
        assert_eq!(b.admit(t + Duration::from_secs(3)), Admit::Probe);
        drop(ProbeGuard(Some(b.clone())));
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
    }

    #[test]
    fn only_no_answer_counts_as_a_failure() {
        assert!(!answered(Code::Unavailable));
        assert!(!answered(Code::DeadlineExceeded));
        for c in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::Internal,
        ] {
            assert!(answered(c), "{c:?}");
        }
    }

    #[test]
    fn a_refusal_says_when_to_retry_in_whole_seconds() {
        let s = Breaker::refusal(Duration::from_millis(1200));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(RETRY_AFTER_METADATA).unwrap(), "2");
        let s = Breaker::refusal(Duration::from_millis(3));
        assert_eq!(s.metadata().get(RETRY_AFTER_METADATA).unwrap(), "1");
    }
}
