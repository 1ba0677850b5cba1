//! CORS for `/api/*` and the Origin check of `/ws`: an allow-list from `CORS_ORIGINS` (empty: the
//! gateway's own origin only), or any origin (`*`, the original's and the AUTH=off default).
use http::{header, HeaderValue, Response};

const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "Content-Type, Authorization, If-Match, Idempotency-Key";
/// Response headers a cross-origin page may read: the task's version and the event's seq.
const EXPOSE_HEADERS: &str = "ETag, Taskboard-Seq, Idempotent-Replayed";

/// The CORS policy.
#[derive(Clone, Debug)]
pub enum Cors {
    Any,
    List(Vec<HeaderValue>),
}

impl Cors {
    /// Parses `*` or a comma-separated list of origins.
    pub fn parse(spec: &str) -> Result<Cors, crate::Error> {
        let items: Vec<&str> = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.contains(&"*") {
            return Ok(Cors::Any);
        }
        items
            .into_iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/')).map_err(|_| {
                    crate::Error::Config(format!("invalid origin in CORS_ORIGINS: {o:?}"))
                })
            })
            .collect::<Result<_, _>>()
            .map(Cors::List)
    }

    /// Whether a request from `origin` may use the API.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Cors::Any => true,
            Cors::List(l) => l.iter().any(|o| o == origin),
        }
    }

    /// Whether a request from `origin` may use the API: listed, or the gateway's own origin
    /// (`host` is the request's Host; the board page is served from here).
    pub fn allows_from(&self, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
        self.allows(origin) || same_origin(origin, host)
    }

    /// Adds the CORS headers to a response.
    pub fn apply<B>(&self, origin: Option<&HeaderValue>, mut r: Response<B>) -> Response<B> {
        let h = r.headers_mut();
        match self {
            Cors::Any => {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
            Cors::List(_) => {
                h.append(header::VARY, HeaderValue::from_static("Origin"));
                match origin {
                    Some(o) if self.allows(o) => {
                        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
                    }
                    _ => return r,
                }
            }
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        r
    }
}

/// `origin` is `http://<host>` or `https://<host>`.
fn same_origin(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(o), Some(Ok(h))) = (origin.to_str(), host.map(HeaderValue::to_str)) else {
        return false;
    };
    o.strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp() -> Response<()> {
        Response::new(())
    }

    #[test]
    fn default_allows_any_origin_like_the_original() {
        let c = Cors::parse("*").unwrap();
        let r = c.apply(None, resp());
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
            ALLOW_METHODS
        );
    }

    #[test]
    fn an_empty_list_allows_only_the_gateways_own_origin() {
        let c = Cors::parse("").unwrap();
        let host = HeaderValue::from_static("board.example:8080");
        let own = HeaderValue::from_static("https://board.example:8080");
        let evil = HeaderValue::from_static("https://evil.example");
        assert!(c.allows_from(&own, Some(&host)));
        assert!(!c.allows_from(&evil, Some(&host)));
        assert!(!c.allows_from(&own, None));
        assert!(c
            .apply(Some(&evil), resp())
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
    }

    #[test]
    fn allow_list_echoes_only_listed_origins() {
        let c = Cors::parse("https://a.example, https://b.example/").unwrap();
        let ok = HeaderValue::from_static("https://b.example");
        let r = c.apply(Some(&ok), resp());
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], ok);
        let bad = HeaderValue::from_static("https://evil.example");
        let r = c.apply(Some(&bad), resp());
        assert!(r
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
        assert!(!c.allows(&bad));
    }
}
