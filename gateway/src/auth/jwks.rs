//! The identity provider's signing keys over HTTP(S): `JWT_JWKS_URL`, or found by OIDC discovery
//! from `JWT_ISSUER`. Cached as the answer's `Cache-Control: max-age` says (`JWT_JWKS_MIN_FRESH_SECS`,
//! 30 s by default, to 24 h; 5 min without one), refetched early when a token names an unknown `kid` (at most every
//! [`KID_REFRESH_EVERY`], so a flood of made-up `kid`s cannot hammer the provider), and kept
//! while the provider is down for up to `JWT_JWKS_MAX_STALE_SECS`.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Verifier;

/// Least time between two fetches caused by unknown `kid`s.
pub const KID_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// The most a provider's `max-age` keeps a key set fresh (also the most `min_fresh` may be).
pub const MAX_FRESH: Duration = Duration::from_secs(86_400);
/// Freshness without a `max-age`.
const DEFAULT_FRESH: Duration = Duration::from_secs(300);
/// Retry delays after a failed fetch: 5 s doubling to 60 s.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Where the keys are.
#[derive(Clone, Debug)]
pub enum Source {
    Url(String),
    /// `<issuer>/.well-known/openid-configuration` names the JWKS (`jwks_uri`).
    Discovery {
        issuer: String,
    },
}

#[derive(Default)]
struct State {
    /// The JWKS address (discovered once, then kept).
    jwks_url: Option<String>,
    fetched_at: Option<Instant>,
    fresh_until: Option<Instant>,
    last_attempt: Option<Instant>,
    /// The last fetch an unknown `kid` caused (these are rate-limited).
    last_kid_fetch: Option<Instant>,
    failures: u32,
}

/// How the fetcher behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The last keys fetched stay in use this long while the provider cannot be reached.
    pub max_stale: Duration,
    /// The least a fetched set is fresh, whatever the provider says (at most [`MAX_FRESH`]).
    pub min_fresh: Duration,
    /// Certificates (PEM) trusted for the provider's TLS besides the system's: a provider
    /// behind a private CA (`JWT_JWKS_CA_FILE`).
    pub ca_pem: Option<Vec<u8>>,
}

/// The key cache's fetcher.
pub struct Remote {
    source: Source,
    http: reqwest::Client,
    max_stale: Duration,
    /// The least a fetched set is fresh, whatever the provider says (`no-cache`, `max-age=0`).
    min_fresh: Duration,
    state: Mutex<State>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

/// Checks that `url` is an absolute http(s) address.
///
/// # Errors
/// What is wrong with it, naming `what` (the setting).
pub fn check_url(url: &str, what: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{what} {url:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{what} {url:?}: must be an http or https address"));
    }
    Ok(())
}

impl Remote {
    /// A fetcher of `source`'s keys, as `settings` say.
    ///
    /// # Errors
    /// A bad address, or a CA file without a certificate.
    pub fn new(source: Source, settings: Settings) -> Result<Self, String> {
        let jwks_url = match &source {
            Source::Url(u) => {
                check_url(u, "JWT_JWKS_URL")?;
                Some(u.clone())
            }
            Source::Discovery { issuer } => {
                check_url(issuer, "JWT_ISSUER (for OIDC discovery)")?;
                None
            }
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("taskboard-gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("JWT_JWKS_CA_FILE: {e}"))?;
            if certs.is_empty() {
                return Err("JWT_JWKS_CA_FILE holds no PEM certificate".into());
            }
            http = http.tls_certs_merge(certs);
        }
        let http = http.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Remote {
            source,
            http,
            max_stale: settings.max_stale,
            min_fresh: settings.min_fresh.min(MAX_FRESH),
            state: Mutex::new(State {
                jwks_url,
                ..State::default()
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cached keys may be used.
    ///
    /// # Errors
    /// Why not, in words fit for the client.
    pub fn usable(&self) -> Result<(), String> {
        match self.lock().fetched_at {
            None => {
                Err("the identity provider's signing keys are not loaded yet; retry shortly".into())
            }
            Some(t) if t.elapsed() > self.max_stale => Err(format!(
                "the identity provider's signing keys are stale (not refreshed for over {} s)",
                self.max_stale.as_secs()
            )),
            Some(_) => Ok(()),
        }
    }

    /// A token named a `kid` we do not hold: refetches unless one was tried within
    /// [`KID_REFRESH_EVERY`]; whether it fetched new keys.
    pub async fn refresh_for_unknown_kid(&self, verifier: &Verifier) -> bool {
        let recent = self
            .lock()
            .last_kid_fetch
            .is_some_and(|t| t.elapsed() < KID_REFRESH_EVERY);
        if recent {
            return false;
        }
        self.fetch(verifier, "unknown_kid").await.is_ok()
    }

    /// Fetches the key set now (`cause` labels the metric) and installs it in `verifier`.
    ///
    /// # Errors
    /// Why it failed (logged and counted too); the keys held before stay.
    pub async fn fetch(&self, verifier: &Verifier, cause: &'static str) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        if cause == "unknown_kid" {
            // Another request's fetch may just have done it.
            let mut s = self.lock();
            if s.last_kid_fetch
                .is_some_and(|t| t.elapsed() < KID_REFRESH_EVERY)
            {
                return Ok(0);
            }
            s.last_kid_fetch = Some(Instant::now());
        }
        self.lock().last_attempt = Some(Instant::now());
        let r = self.fetch_once(verifier).await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        metrics::counter!("taskboard_jwks_refreshes_total", "outcome" => outcome, "cause" => cause)
            .increment(1);
        let mut s = self.lock();
        match &r {
            Ok((n, fresh)) => {
                let now = Instant::now();
                s.fetched_at = Some(now);
                s.fresh_until = Some(now + *fresh);
                s.failures = 0;
                metrics::gauge!("taskboard_jwks_keys").set(*n as f64);
                tracing::info!(
                    keys = n,
                    fresh_secs = fresh.as_secs(),
                    cause,
                    "identity provider keys fetched"
                );
            }
            Err(e) => {
                s.failures += 1;
                let held = s.fetched_at.map(|t| t.elapsed().as_secs());
                tracing::warn!(error = %e, cause, failures = s.failures, keys_age_secs = ?held,
                    "could not fetch the identity provider's keys; the keys held before stay in use");
            }
        }
        r.map(|(n, _)| n)
    }

    async fn fetch_once(&self, verifier: &Verifier) -> Result<(usize, Duration), String> {
        let known = self.lock().jwks_url.clone();
        let url = match known {
            Some(u) => u,
            None => {
                let u = self.discover().await?;
                self.lock().jwks_url = Some(u.clone());
                u
            }
        };
        let r = self.get(&url, "GET").await?;
        let fresh = r
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map_or(DEFAULT_FRESH, |cc| freshness(cc, self.min_fresh))
            .max(self.min_fresh);
        let body = r
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {}", with_causes(&e)))?;
        let n = verifier
            .load_jwks(&body)
            .map_err(|e| format!("{url} {e}"))?;
        if let Some(t) = self.lock().fetched_at {
            metrics::gauge!("taskboard_jwks_age_seconds").set(t.elapsed().as_secs_f64());
        }
        Ok((n, fresh))
    }

    /// A successful answer to GET `url`; errors begin with `what` and the address.
    async fn get(&self, url: &str, what: &str) -> Result<reqwest::Response, String> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{what} {url}: {}", with_causes(&e)))?;
        if !r.status().is_success() {
            return Err(format!("{what} {url}: HTTP {}", r.status()));
        }
        Ok(r)
    }

    /// The JWKS address the issuer's discovery document names.
    async fn discover(&self) -> Result<String, String> {
        let Source::Discovery { issuer } = &self.source else {
            return Err("no JWKS address".into());
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let r = self.get(&url, "OIDC discovery GET").await?;
        let doc: serde_json::Value = r
            .json()
            .await
            .map_err(|e| format!("OIDC discovery {url}: not JSON: {e}"))?;
        let jwks = doc["jwks_uri"]
            .as_str()
            .ok_or_else(|| format!("OIDC discovery {url}: no jwks_uri"))?;
        check_url(jwks, "the discovered jwks_uri")?;
        tracing::info!(issuer, jwks_uri = jwks, "OIDC discovery");
        Ok(jwks.to_owned())
    }

    /// When the next scheduled fetch is due.
    fn next_due(&self) -> Instant {
        let s = self.lock();
        if s.failures > 0 {
            let back = RETRY_FIRST * 2u32.saturating_pow(s.failures - 1);
            return s.last_attempt.unwrap_or_else(Instant::now) + back.min(RETRY_MAX);
        }
        s.fresh_until.unwrap_or_else(Instant::now)
    }

    /// Refetches the keys whenever they go stale (retrying with a backoff after a failure),
    /// until `shutdown`.
    pub async fn run(
        self: std::sync::Arc<Self>,
        verifier: std::sync::Arc<Verifier>,
        shutdown: CancellationToken,
    ) {
        loop {
            let due = tokio::time::Instant::from_std(self.next_due());
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = shutdown.cancelled() => return,
            }
            let _ = self.fetch(&verifier, "schedule").await;
        }
    }
}

/// `e` and what caused it ("error sending request" alone does not say that a certificate was
/// refused, or a connection).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// How long an answer with `cache_control` is fresh, at least `min`.
fn freshness(cache_control: &str, min: Duration) -> Duration {
    let mut fresh = DEFAULT_FRESH;
    for d in cache_control.split(',').map(str::trim) {
        let d = d.to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return min;
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                fresh = Duration::from_secs(n);
            }
        }
    }
    fresh.clamp(min, MAX_FRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_sets_freshness_within_bounds() {
        let min = Duration::from_secs(30);
        let f = |cc| freshness(cc, min);
        assert_eq!(f("public, max-age=600"), Duration::from_secs(600));
        assert_eq!(f("max-age=1"), min);
        assert_eq!(f("max-age=99999999"), MAX_FRESH);
        assert_eq!(f("no-cache"), min);
        assert_eq!(f("private"), DEFAULT_FRESH);
        assert_eq!(freshness("max-age=2", Duration::from_secs(1)).as_secs(), 2);
    }

    #[test]
    fn addresses_must_be_http() {
        assert!(check_url("https://id.example/jwks", "X").is_ok());
        assert!(check_url("ftp://id.example/jwks", "X")
            .unwrap_err()
            .contains("http"));
        assert!(check_url("not a url", "X").unwrap_err().contains("X"));
    }
}
