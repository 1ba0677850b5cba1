//! The board page: static files embedded in the binary (no CDN, works offline, no build step).
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

const INDEX: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE: &str = include_str!("../../static/style.css");
/// The REST API's OpenAPI 3.1 description (hand-written; schemathesis checks the gateway against
/// it in `scripts/test.sh`).
pub const OPENAPI: &str = include_str!("../../static/openapi.json");

/// The page only talks to its own origin (`'self'` covers its own `ws:`/`wss:` in CSP 3, so no
/// WebSocket to another host); inline scripts and styles are not allowed, which keeps any injected
/// markup inert.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The paths the page is served at (the route table routes them here).
pub const PATHS: &[&str] = &["/", "/index.html", "/static/app.js", "/static/style.css"];

/// The embedded file at `path`, if there is one.
pub fn file(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, kind) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/static/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/static/style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Small files: always revalidate, so a new gateway version is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(r)
}

/// `GET /openapi.json`.
pub fn openapi(method: &http::Method) -> Response<Full<Bytes>> {
    if !matches!(*method, http::Method::GET | http::Method::HEAD) {
        return crate::response::not_allowed("GET, HEAD");
    }
    let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_assets_are_served_with_types() {
        for (p, t) in [
            ("/", "text/html"),
            ("/static/app.js", "text/javascript"),
            ("/static/style.css", "text/css"),
        ] {
            let r = file(p).unwrap();
            assert!(r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(t));
        }
        assert!(file("/static/nope.js").is_none());
    }

    #[test]
    fn the_page_may_connect_to_its_own_origin_only() {
        let connect = CSP
            .split(';')
            .find(|d| d.trim().starts_with("connect-src"))
            .unwrap();
        assert_eq!(connect.trim(), "connect-src 'self'");
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_api_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/api/tasks",
            "/api/tasks/{id}",
            "/api/boards",
            "/api/boards/{id}",
            "/api/boards/{id}/members",
            "/api/boards/{id}/members/{user}",
            "/api/me",
            "/health",
            "/ready",
        ] {
            assert!(paths.contains_key(p), "{p} is not described");
        }
    }

    #[test]
    fn the_page_never_writes_user_text_as_html() {
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML"));
        assert!(!APP_JS.contains("outerHTML"));
    }
}
