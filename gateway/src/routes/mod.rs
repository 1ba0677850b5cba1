//! HTTP routing: the one route table (it gives both the handler and the metric label of every
//! path), the per-request metrics, and the small response builders the handlers share.
mod body;
mod ready;
mod tasks;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

pub use body::MAX_BODY;
pub use tasks::TaskJson;

use crate::error::ApiError;
use crate::AppState;

pub type Resp = Response<Full<Bytes>>;

/// What serves a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Ws,
    Tasks,
    Task,
    Page,
}

/// Every route: its matcher pattern, what serves it, and its `route` metric label. The board
/// page's files come from [`crate::page::PATHS`]. Everything under `/api/tasks/` is a task id (a
/// malformed one, even empty or with slashes, is a 400 that says so).
const ROUTES: &[(&str, Route, &str)] = &[
    ("/health", Route::Health, "/health"),
    ("/ready", Route::Ready, "/ready"),
    ("/ws", Route::Ws, "/ws"),
    ("/api/tasks", Route::Tasks, "/api/tasks"),
    ("/api/tasks/", Route::Task, "/api/tasks/{id}"),
    ("/api/tasks/{*id}", Route::Task, "/api/tasks/{id}"),
];

/// The label of the page's files (one series for all of them).
const PAGE_LABEL: &str = "/ (page)";
/// The label of everything else (never the raw path, which would make one series per URL).
const OTHER_LABEL: &str = "other";

/// The route table, built once (immutable afterwards).
fn table() -> &'static matchit::Router<(Route, &'static str)> {
    static TABLE: OnceLock<matchit::Router<(Route, &'static str)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut r = matchit::Router::new();
        for (pattern, route, label) in ROUTES {
            r.insert(*pattern, (*route, *label))
                .expect("the route table has no conflicts");
        }
        for path in crate::page::PATHS {
            r.insert(*path, (Route::Page, PAGE_LABEL))
                .expect("page paths do not overlap the API");
        }
        r
    })
}

/// The route of `path`, its metric label, and its `{id}` if it has one.
fn route_of(path: &str) -> (Option<Route>, &'static str, Option<String>) {
    match table().at(path) {
        Ok(m) => {
            let (route, label) = *m.value;
            (Some(route), label, m.params.get("id").map(str::to_owned))
        }
        Err(_) => (None, OTHER_LABEL, None),
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Routes one request, and records it.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let start = std::time::Instant::now();
    let (route, label, id) = route_of(req.uri().path());
    let method = method_label(req.method());
    let mut r = dispatch(state, req, peer, route, id).await;
    // Every answer: browsers must not guess a type (a JSON error sniffed as HTML, say).
    r.headers_mut()
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    crate::metrics::http(
        label,
        method,
        r.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    r
}

async fn dispatch(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    route: Option<Route>,
    id: Option<String>,
) -> Resp {
    match route {
        Some(Route::Health) => text(StatusCode::OK, "OK"),
        Some(Route::Ready) => ready::ready(&state).await,
        Some(Route::Ws) => crate::ws::upgrade(&state, req, peer).await,
        Some(Route::Tasks) => {
            let origin = req.headers().get(header::ORIGIN).cloned();
            let r = tasks::collection(&state, req)
                .await
                .unwrap_or_else(ApiError::into_response);
            state.cors.apply(origin.as_ref(), r)
        }
        Some(Route::Task) => {
            let origin = req.headers().get(header::ORIGIN).cloned();
            let r = tasks::item(&state, req, id.as_deref().unwrap_or_default())
                .await
                .unwrap_or_else(ApiError::into_response);
            state.cors.apply(origin.as_ref(), r)
        }
        Some(Route::Page) if matches!(*req.method(), Method::GET | Method::HEAD) => {
            crate::page::file(req.uri().path())
                .unwrap_or_else(|| ApiError::not_found("Not found").into_response())
        }
        Some(Route::Page) => not_allowed("GET, HEAD"),
        None => ApiError::not_found("Not found").into_response(),
    }
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => {
            let mut r = Response::new(Full::new(Bytes::from(b)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "serialising a response failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            )
            .into_response()
        }
    }
}

pub(crate) fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// 405 with the `Allow` header listing what the route takes.
pub(crate) fn not_allowed(allow: &'static str) -> Resp {
    let mut r = ApiError::method_not_allowed().into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_one_route_and_its_template_as_label() {
        assert_eq!(route_of("/health").0, Some(Route::Health));
        assert_eq!(route_of("/api/tasks").1, "/api/tasks");
        let (r, label, id) = route_of("/api/tasks/17");
        assert_eq!(
            (r, label, id.as_deref()),
            (Some(Route::Task), "/api/tasks/{id}", Some("17"))
        );
        for p in crate::page::PATHS {
            assert_eq!(route_of(p).0, Some(Route::Page), "{p}");
            assert!(
                crate::page::file(p).is_some(),
                "{p} is routed but not served"
            );
        }
        assert_eq!(route_of("/nope").1, OTHER_LABEL);
        assert_eq!(route_of("/api/tasks/1/x").2.as_deref(), Some("1/x"));
        assert_eq!(route_of("/api/tasks/").2, None);
    }
}
