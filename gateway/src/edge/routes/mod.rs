//! HTTP routing: the one route table (it gives both the handler and the metric label of every
//! path) and the per-request metrics; the response builders come from `crate::response`.
mod boards;
mod body;
mod history;
mod ready;
mod search;
mod tasks;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::{header, HeaderValue, Method, Request, StatusCode};

use hyper::body::Incoming;

pub use body::MAX_BODY;
pub use tasks::TaskJson;

use crate::error::ApiError;
pub(crate) use crate::response::{empty, json, not_allowed, text, with_seq, Resp};
use crate::AppState;

/// What serves a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Ws,
    Tasks,
    Task,
    TaskEvents,
    Boards,
    Board,
    BoardEvents,
    Members,
    Member,
    Me,
    Search,
    OpenApi,
    Page,
}

/// Every route: its matcher pattern, what serves it, and its `route` metric label. The board
/// page's files come from [`crate::edge::page::PATHS`]. Everything under `/api/tasks/` is a task id (a
/// malformed one, even empty or with slashes, is a 400 that says so).
const ROUTES: &[(&str, Route, &str)] = &[
    ("/health", Route::Health, "/health"),
    ("/ready", Route::Ready, "/ready"),
    ("/ws", Route::Ws, "/ws"),
    ("/api/tasks", Route::Tasks, "/api/tasks"),
    ("/api/tasks/", Route::Task, "/api/tasks/{id}"),
    ("/api/tasks/{*id}", Route::Task, "/api/tasks/{id}"),
    ("/api/boards", Route::Boards, "/api/boards"),
    ("/api/boards/{id}", Route::Board, "/api/boards/{id}"),
    (
        "/api/boards/{id}/events",
        Route::BoardEvents,
        "/api/boards/{id}/events",
    ),
    (
        "/api/boards/{id}/members",
        Route::Members,
        "/api/boards/{id}/members",
    ),
    (
        "/api/boards/{id}/members/{user}",
        Route::Member,
        "/api/boards/{id}/members/{user}",
    ),
    ("/api/me", Route::Me, "/api/me"),
    ("/api/search", Route::Search, "/api/search"),
    ("/openapi.json", Route::OpenApi, "/openapi.json"),
];

/// The `{id}` and `{user}` of a path.
#[derive(Debug, Default, PartialEq, Eq)]
struct Params {
    id: Option<String>,
    user: Option<String>,
}

/// The label of a task's history.
const TASK_EVENTS_LABEL: &str = "/api/tasks/{id}/events";
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
        for path in crate::edge::page::PATHS {
            r.insert(*path, (Route::Page, PAGE_LABEL))
                .expect("page paths do not overlap the API");
        }
        r
    })
}

/// The route of `path`, its metric label, and its parameters.
fn route_of(path: &str) -> (Option<Route>, &'static str, Params) {
    match table().at(path) {
        Ok(m) => {
            let (route, label) = *m.value;
            let id = m.params.get("id");
            // `/api/tasks/{id}/events` under the task route's catch-all (the router cannot hold
            // both).
            if let Some(task) = id
                .filter(|_| route == Route::Task)
                .and_then(|id| id.strip_suffix("/events"))
            {
                let params = Params {
                    id: Some(task.to_owned()),
                    user: None,
                };
                return (Some(Route::TaskEvents), TASK_EVENTS_LABEL, params);
            }
            let params = Params {
                id: id.map(str::to_owned),
                user: m.params.get("user").map(str::to_owned),
            };
            (Some(route), label, params)
        }
        Err(_) => (None, OTHER_LABEL, Params::default()),
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
    let (route, label, params) = route_of(req.uri().path());
    let method = method_label(req.method());
    let mut r = if taskboard_telemetry::otel::enabled() {
        // A span per request, continuing the caller's trace; its id goes into every log line.
        let span = tracing::info_span!(
            "http",
            method,
            route = label,
            trace_id = tracing::field::Empty
        );
        taskboard_telemetry::otel::continue_from(&span, req.headers());
        if let Some(id) = taskboard_telemetry::otel::trace_id(&span) {
            span.record("trace_id", id);
        }
        tracing::Instrument::instrument(dispatch(state, req, peer, route, params), span).await
    } else {
        dispatch(state, req, peer, route, params).await
    };
    security_headers(r.headers_mut());
    crate::metrics::http(
        label,
        method,
        r.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    r
}

/// Headers on every answer: browsers must not guess a type (a JSON error sniffed as HTML, say),
/// frame the API or the page, or send the URL elsewhere; API answers are not cached. The page's
/// own (stricter) CSP is kept.
fn security_headers(h: &mut http::HeaderMap) {
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

async fn dispatch(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    route: Option<Route>,
    params: Params,
) -> Resp {
    match route {
        Some(Route::Health) => match *req.method() {
            Method::GET | Method::HEAD => text(StatusCode::OK, "OK"),
            _ => not_allowed("GET, HEAD"),
        },
        Some(Route::Ready) => match *req.method() {
            Method::GET | Method::HEAD => ready::ready(&state).await,
            _ => not_allowed("GET, HEAD"),
        },
        Some(Route::Ws) => crate::ws::upgrade(&state, req, peer).await,
        Some(Route::OpenApi) => crate::edge::page::openapi(req.method()),
        Some(
            api @ (Route::Tasks
            | Route::Task
            | Route::TaskEvents
            | Route::Boards
            | Route::Board
            | Route::BoardEvents
            | Route::Members
            | Route::Member
            | Route::Search
            | Route::Me),
        ) => {
            let origin = req.headers().get(header::ORIGIN).cloned();
            let r = api_call(&state, req, api, params, peer)
                .await
                .unwrap_or_else(ApiError::into_response);
            state.cors.apply(origin.as_ref(), r)
        }
        Some(Route::Page) if matches!(*req.method(), Method::GET | Method::HEAD) => {
            crate::edge::page::file(req.uri().path())
                .unwrap_or_else(|| ApiError::not_found("Not found").into_response())
        }
        Some(Route::Page) => not_allowed("GET, HEAD"),
        None => ApiError::not_found("Not found").into_response(),
    }
}

/// An API call: preflights are answered without credentials; everything else is authenticated
/// (AUTH=on) before it is served.
async fn api_call(
    state: &AppState,
    req: Request<Incoming>,
    route: Route,
    params: Params,
    peer: SocketAddr,
) -> Result<Resp, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(empty(StatusCode::OK));
    }
    let principal = match &state.auth {
        Some(v) => match state.subjects.authenticate(v, req.headers()).await {
            Ok(p) => Some(p),
            Err(e) => {
                // Failed attempts count against the address too (no free password spraying).
                state.rate.address(peer.ip(), None)?;
                return Err(e);
            }
        },
        None => None,
    };
    let who = principal.as_ref();
    state.rate.address(peer.ip(), who)?;
    if matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE) {
        state
            .rate
            .user(who, crate::auth::ratelimit::Limit::UserWrites)?;
    }
    let id = params.id.as_deref().unwrap_or_default();
    match route {
        Route::Tasks => tasks::collection(state, req, who).await,
        Route::Task => tasks::item(state, req, id, who).await,
        Route::TaskEvents => history::task(state, req, id, who).await,
        Route::BoardEvents => history::board(state, req, id, who).await,
        Route::Search => search::search(state, req, who).await,
        Route::Boards => boards::collection(state, req, who).await,
        Route::Board => boards::item(state, req, id, who).await,
        Route::Members => boards::members(state, req, id, who).await,
        Route::Member => {
            let user = params.user.as_deref().unwrap_or_default();
            boards::member(state, req, id, user, who).await
        }
        _ => Ok(boards::me(&req, who, state.auth.is_some())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_one_route_and_its_template_as_label() {
        assert_eq!(route_of("/health").0, Some(Route::Health));
        assert_eq!(route_of("/api/tasks").1, "/api/tasks");
        let (r, label, p) = route_of("/api/tasks/17");
        assert_eq!(
            (r, label, p.id.as_deref()),
            (Some(Route::Task), "/api/tasks/{id}", Some("17"))
        );
        let (r, label, p) = route_of("/api/boards/3/members/9");
        assert_eq!(
            (r, label, p.id.as_deref(), p.user.as_deref()),
            (
                Some(Route::Member),
                "/api/boards/{id}/members/{user}",
                Some("3"),
                Some("9")
            )
        );
        for p in crate::edge::page::PATHS {
            assert_eq!(route_of(p).0, Some(Route::Page), "{p}");
            assert!(
                crate::edge::page::file(p).is_some(),
                "{p} is routed but not served"
            );
        }
        let (r, label, p) = route_of("/api/tasks/5/events");
        assert_eq!(
            (r, label, p.id.as_deref()),
            (Some(Route::TaskEvents), "/api/tasks/{id}/events", Some("5"))
        );
        let (r, _, p) = route_of("/api/boards/4/events");
        assert_eq!((r, p.id.as_deref()), (Some(Route::BoardEvents), Some("4")));
        assert_eq!(route_of("/nope").1, OTHER_LABEL);
        assert_eq!(route_of("/api/tasks/1/x").2.id.as_deref(), Some("1/x"));
        assert_eq!(route_of("/api/tasks/").2.id, None);
    }
}
