//! HTTP routing and the REST handlers: the Go original's routes and status codes, with its
//! defects fixed (404s, `[]`, RFC 3339 timestamps, body limit, CORS allow-list).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use taskboard_proto::{prost_types::Timestamp, v1};

use crate::error::ApiError;
use crate::ws;
use crate::AppState;

/// Largest request body accepted (answered with 413 beyond it).
pub const MAX_BODY: usize = 64 * 1024;
/// How much of an oversized body is read and discarded before the 413 is sent: clients that
/// write the whole body before reading (Python's urllib, many SDKs) would otherwise meet a reset
/// instead of the answer. Beyond this the connection is closed after the 413.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// Page size of `GET /api/tasks` when none (or a non-positive one) is given.
const REST_PAGE_SIZE: i32 = 10;
/// Deadline of the readiness probe of the task service.
const READY_DEADLINE: Duration = Duration::from_secs(1);

pub type Resp = Response<Full<Bytes>>;

/// A task as the REST API shows it: every field present, timestamps RFC 3339 UTC.
#[derive(Serialize, Debug)]
pub struct TaskJson {
    pub id: i64,
    pub board_id: i64,
    pub title: String,
    pub description: String,
    pub completed: bool,
    pub created_by: i64,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
}

/// RFC 3339 UTC with microseconds: the same text the event payloads carry.
fn rfc3339(t: Option<Timestamp>) -> String {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl From<v1::Task> for TaskJson {
    fn from(t: v1::Task) -> Self {
        TaskJson {
            id: t.id,
            board_id: t.board_id,
            title: t.title,
            description: t.description,
            completed: t.completed,
            created_by: t.created_by,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
            version: t.version,
        }
    }
}

#[derive(Serialize)]
struct ListJson {
    tasks: Vec<TaskJson>,
    total_count: i32,
    page: i32,
    page_size: i32,
    /// The board's latest event seq in the same snapshot: follow `/ws?since=head_seq` from here.
    head_seq: i64,
}

/// POST /api/tasks body; absent or null fields become empty/zero and are then validated.
#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    board_id: Option<i64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    created_by: Option<i64>,
}

/// PUT /api/tasks/{id} body; absent or null = unchanged.
#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    completed: Option<bool>,
}

/// The route template of a path: the `route` label (never the raw path, which would make one
/// series per task id).
fn route_of(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/ready" => "/ready",
        "/ws" => "/ws",
        "/api/tasks" => "/api/tasks",
        p if p.starts_with("/api/tasks/") => "/api/tasks/{id}",
        "/" | "/index.html" | "/static/app.js" | "/static/style.css" => "/ (page)",
        _ => "other",
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
    let route = route_of(req.uri().path());
    let method = method_label(req.method());
    let r = dispatch(state, req, peer).await;
    crate::metrics::http(
        route,
        method,
        r.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    r
}

async fn dispatch(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/health" => text(StatusCode::OK, "OK"),
        "/ready" => ready(&state).await,
        "/ws" => websocket(&state, req, peer).await,
        "/api/tasks" => {
            let origin = req.headers().get(header::ORIGIN).cloned();
            let r = collection(&state, req)
                .await
                .unwrap_or_else(ApiError::into_response);
            state.cors.apply(origin.as_ref(), r)
        }
        p if p.starts_with("/api/tasks/") => {
            let origin = req.headers().get(header::ORIGIN).cloned();
            let id = &p["/api/tasks/".len()..];
            let r = item(&state, req, id)
                .await
                .unwrap_or_else(ApiError::into_response);
            state.cors.apply(origin.as_ref(), r)
        }
        p => match *req.method() {
            Method::GET | Method::HEAD => crate::page::file(p),
            _ => None,
        }
        .unwrap_or_else(|| ApiError::not_found("Not found").into_response()),
    }
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
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

/// Adds the seq of the event a mutation committed, so a client can match its own change.
fn with_seq(mut r: Resp, seq: i64) -> Resp {
    if seq > 0 {
        r.headers_mut()
            .insert("Taskboard-Seq", HeaderValue::from(seq));
    }
    r
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// 405 with the `Allow` header listing what the route takes.
fn not_allowed(allow: &'static str) -> Resp {
    let mut r = ApiError::method_not_allowed().into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn collection(state: &AppState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    match *req.method() {
        Method::GET => list(state, req.uri().query()).await,
        Method::POST => {
            let b: CreateBody = read_json(req, state.body_timeout()).await?;
            let r = state
                .tasks
                .create(v1::CreateTaskRequest {
                    board_id: b.board_id.unwrap_or(0),
                    title: b.title.unwrap_or_default(),
                    description: b.description.unwrap_or_default(),
                    created_by: b.created_by.unwrap_or(0),
                })
                .await
                .map_err(|s| ApiError::from_status(&s, "create"))?;
            let task = r.task.ok_or_else(missing_task)?;
            Ok(with_seq(
                json(StatusCode::CREATED, &TaskJson::from(task)),
                r.seq,
            ))
        }
        Method::OPTIONS => Ok(empty(StatusCode::OK)),
        _ => Ok(not_allowed("GET, POST, OPTIONS")),
    }
}

async fn item(state: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(empty(StatusCode::OK));
    }
    if !matches!(*req.method(), Method::GET | Method::PUT | Method::DELETE) {
        return Ok(not_allowed("GET, PUT, DELETE, OPTIONS"));
    }
    let id = id.parse::<i64>().ok().filter(|i| *i > 0).ok_or_else(|| {
        ApiError::bad_request("Invalid task ID")
            .with_message(format!("task ID must be a positive integer, got {id:?}"))
    })?;
    match *req.method() {
        Method::GET => {
            let r = state
                .tasks
                .get(id)
                .await
                .map_err(|s| ApiError::from_status(&s, "get"))?;
            let task = r.task.ok_or_else(missing_task)?;
            Ok(json(StatusCode::OK, &TaskJson::from(task)))
        }
        Method::PUT => {
            let b: UpdateBody = read_json(req, state.body_timeout()).await?;
            let r = state
                .tasks
                .update(v1::UpdateTaskRequest {
                    id,
                    title: b.title,
                    description: b.description,
                    completed: b.completed,
                })
                .await
                .map_err(|s| ApiError::from_status(&s, "update"))?;
            let task = r.task.ok_or_else(missing_task)?;
            Ok(with_seq(json(StatusCode::OK, &TaskJson::from(task)), r.seq))
        }
        _ => {
            let r = state
                .tasks
                .delete(id)
                .await
                .map_err(|s| ApiError::from_status(&s, "delete"))?;
            Ok(with_seq(empty(StatusCode::NO_CONTENT), r.seq))
        }
    }
}

fn missing_task() -> ApiError {
    tracing::error!("task service answered without a task");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal server error",
    )
}

/// Go's strconv.ParseBool, which the original used for `completed`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

async fn list(state: &AppState, query: Option<&str>) -> Result<Resp, ApiError> {
    let mut board = None;
    let mut page = 0i32;
    let mut size = 0i32;
    let mut completed = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let bad = |what: &str| {
            ApiError::bad_request(format!("Invalid {what}"))
                .with_message(format!("{what} must be an integer, got {v:?}"))
        };
        match &*k {
            "board_id" if !v.is_empty() => {
                board = Some(v.parse::<i64>().map_err(|_| bad("board_id"))?)
            }
            "page" if !v.is_empty() => page = v.parse().map_err(|_| bad("page"))?,
            "page_size" if !v.is_empty() => size = v.parse().map_err(|_| bad("page_size"))?,
            "completed" if !v.is_empty() => {
                completed = Some(parse_bool(&v).ok_or_else(|| {
                    ApiError::bad_request("Invalid completed")
                        .with_message(format!("completed must be true or false, got {v:?}"))
                })?)
            }
            _ => {}
        }
    }
    let r = state
        .tasks
        .list(v1::ListTasksRequest {
            board_id: board.unwrap_or(0),
            completed,
            // REST's default page size is 10 (the original gateway's); the task service's own
            // default for 0 is the original gRPC default of 50.
            page_size: if size <= 0 { REST_PAGE_SIZE } else { size },
            page_number: page,
        })
        .await
        .map_err(|s| ApiError::from_status(&s, "list"))?;
    Ok(json(
        StatusCode::OK,
        &ListJson {
            tasks: r.tasks.into_iter().map(TaskJson::from).collect(),
            total_count: r.total_count,
            page: r.page_number,
            page_size: r.page_size,
            head_seq: r.head_seq,
        },
    ))
}

/// Reads a JSON body of at most `MAX_BODY` bytes, all of it within `deadline`.
async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    deadline: Duration,
) -> Result<T, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    let read = async {
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large(&mut body, declared).await);
        }
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                ApiError::bad_request("Invalid request body")
                    .with_message("the request body could not be read")
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BODY {
                    return Err(too_large(&mut body, None).await);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    let body = tokio::time::timeout(deadline, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "deadline_exceeded",
            "Request body timeout",
        )
        .with_message(format!(
            "the request body did not arrive within {} ms",
            deadline.as_millis()
        ))
        .closing()
    })??;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("Invalid request body").with_message(e.to_string()))
}

/// The 413, after reading and discarding what is left of a body that fits in `DRAIN_LIMIT`, so
/// the client gets to read the answer; a larger one is not read (the connection closes).
async fn too_large(body: &mut Incoming, declared: Option<u64>) -> ApiError {
    let e = ApiError::too_large(MAX_BODY);
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return e.closing();
    }
    let mut drained = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            drained += data.len();
            if drained > DRAIN_LIMIT {
                return e.closing();
            }
        }
    }
    e
}

async fn ready(state: &AppState) -> Resp {
    let mut problems = Vec::new();
    if let Err(e) = state.tasks.ready(READY_DEADLINE).await {
        problems.push(e);
    }
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        problems.push(format!("nats: {}", state.nats.connection_state()));
    } else if !state.subscribed.load(std::sync::atomic::Ordering::Acquire) {
        problems.push("nats: event subscription not confirmed yet".into());
    }
    if problems.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Not ready")
            .with_message(problems.join("; "))
            .into_response()
    }
}

async fn websocket(state: &Arc<AppState>, mut req: Request<Incoming>, peer: SocketAddr) -> Resp {
    if req.method() != Method::GET {
        return not_allowed("GET");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut r = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "Upgrade Required",
        )
        .with_message("/ws speaks WebSocket; connect with a WebSocket client")
        .into_response();
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return r;
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        if !state.cors.allows(origin) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "Origin not allowed",
            )
            .into_response();
        }
    }
    let sub = match ws::parse_query(req.uri().query()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => {
            return ApiError::bad_request("Invalid WebSocket handshake")
                .with_message(e.to_string())
                .into_response()
        }
    };
    let session = ws::Session::subscribe(
        state.hub.clone(),
        state.tasks.clone(),
        state.session,
        sub,
        state.shutdown.clone(),
        peer,
    )
    .await;
    state.tracker.spawn(async move {
        match upgrade.await {
            Ok(ws) => session.run(ws).await,
            Err(e) => tracing::debug!(peer.addr = %peer, error = %e, "upgrade did not complete"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_micros() {
        let t = Timestamp {
            seconds: 1_795_801_831,
            nanos: 123_456_000,
        };
        assert_eq!(rfc3339(Some(t)), "2026-11-27T17:50:31.123456Z");
    }

    #[test]
    fn completed_filter_accepts_what_go_accepted() {
        for v in ["1", "t", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(v), Some(true));
        }
        for v in ["0", "f", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(v), Some(false));
        }
        assert_eq!(parse_bool("yes"), None);
    }
}
