//! `/api/tasks` and `/api/tasks/{id}`: the original's REST contract over the task service's gRPC,
//! with its defects fixed (404s, `[]`, RFC 3339 timestamps).
use chrono::{DateTime, SecondsFormat};
use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use taskboard_proto::{prost_types::Timestamp, v1};

use super::body::read_json;
use super::{empty, json, not_allowed, Resp};
use crate::auth::Principal;
use crate::error::{etag, ApiError};
use crate::AppState;

/// Page size of `GET /api/tasks` when none (or a non-positive one) is given.
const REST_PAGE_SIZE: i32 = 10;

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
    /// The member working on it; null: nobody.
    pub assignee: Option<i64>,
    pub due_at: Option<String>,
    /// Manual order, ascending.
    #[serde(serialize_with = "number_as_postgres_writes_it")]
    pub position: f64,
}

/// A float as PostgreSQL's JSON has it in the event payloads: a whole number without `.0`, so
/// REST answers and events carry the same text.
fn number_as_postgres_writes_it<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every whole number below is exact
    if v.fract() == 0.0 && v.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)]
        return s.serialize_i64(*v as i64);
    }
    s.serialize_f64(*v)
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
            assignee: Some(t.assignee).filter(|a| *a != 0),
            due_at: t.due_at.map(|d| rfc3339(Some(d))),
            position: t.position,
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
    #[serde(default)]
    assignee: Option<i64>,
    #[serde(default)]
    due_at: Option<String>,
    #[serde(default)]
    position: Option<f64>,
}

/// PUT /api/tasks/{id} body; absent = unchanged; null = unchanged, except for `assignee` and
/// `due_at`, where null removes them.
#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    completed: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    assignee: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    due_at: Option<Option<String>>,
    #[serde(default)]
    position: Option<f64>,
}

/// A field that is present: `Some(None)` when it is null (absent fields stay `None` through
/// `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An RFC 3339 time of a body or query field.
fn time_field(v: &str, what: &str) -> Result<Timestamp, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| Timestamp {
            seconds: t.timestamp(),
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        })
        .map_err(|_| {
            ApiError::bad_request(format!("Invalid {what}")).with_message(format!(
                "{what} must be an RFC 3339 time such as 2026-12-01T17:00:00Z, got {v:?}"
            ))
        })
}

/// A task's answer: its JSON with the version as `ETag` (what `If-Match` sends back).
fn task_answer(status: StatusCode, task: v1::Task) -> Resp {
    let tag = etag(task.version);
    let mut r = json(status, &TaskJson::from(task));
    r.headers_mut().insert(http::header::ETAG, tag);
    r
}

/// The `Idempotency-Key` of a create, if any (the task service checks its form).
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::bad_request("Invalid Idempotency-Key").with_message(format!(
            "Idempotency-Key must be 1 to 255 visible ASCII characters; {why}"
        ))
    };
    if values.next().is_some() {
        return Err(bad("got more than one Idempotency-Key header"));
    }
    let v = v.to_str().map_err(|_| bad("got bytes that are not text"))?;
    Ok(Some(v.to_owned()))
}

/// The version an `If-Match` header asks for: `None` without one or for `*` (any current
/// version). Versions are strong tags (`"7"`); a weak tag never matches under If-Match's strong
/// comparison (RFC 9110 13.1.1), so it is answered 412 without asking the task service.
fn if_match(req: &Request<Incoming>) -> Result<Option<i64>, ApiError> {
    let mut values = req.headers().get_all(http::header::IF_MATCH).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::bad_request("Invalid If-Match").with_message(format!(
            "If-Match must be one entity tag as the ETag header gave it (\"7\") or *; {why}"
        ))
    };
    if values.next().is_some() {
        return Err(bad("got more than one If-Match header"));
    }
    let v = v
        .to_str()
        .map_err(|_| bad("got bytes that are not text"))?
        .trim();
    if v == "*" {
        return Ok(None);
    }
    if v.starts_with("W/") {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "Precondition failed",
        )
        .with_message("a weak entity tag never matches If-Match; send the ETag as given"));
    }
    if v.contains(',') {
        return Err(bad("a list of tags is not supported"));
    }
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| bad(&format!("got {v:?}")))
}

pub(super) async fn collection(
    state: &AppState,
    req: Request<Incoming>,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    match *req.method() {
        Method::GET => list(state, req.uri().query(), who).await,
        Method::POST => {
            let idempotency_key = idempotency_key(&req)?;
            let b: CreateBody = read_json(req, state.body_timeout()).await?;
            let (r, replayed) = state
                .creates
                .create(
                    v1::CreateTaskRequest {
                        board_id: b.board_id.unwrap_or(0),
                        title: b.title.unwrap_or_default(),
                        description: b.description.unwrap_or_default(),
                        created_by: b.created_by.unwrap_or(0),
                        idempotency_key,
                        assignee: b.assignee.unwrap_or(0),
                        due_at: b
                            .due_at
                            .as_deref()
                            .map(|d| time_field(d, "due_at"))
                            .transpose()?,
                        position: b.position,
                    },
                    who,
                )
                .await
                .map_err(|s| ApiError::from_status(&s, "create"))?;
            let task = r.task.ok_or_else(missing_task)?;
            let mut answer = super::with_seq(task_answer(StatusCode::CREATED, task), r.seq);
            if replayed {
                answer
                    .headers_mut()
                    .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
            }
            Ok(answer)
        }
        _ => Ok(not_allowed("GET, POST, OPTIONS")),
    }
}

pub(super) async fn item(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    if !matches!(*req.method(), Method::GET | Method::PUT | Method::DELETE) {
        return Ok(not_allowed("GET, PUT, DELETE, OPTIONS"));
    }
    let id = positive_id(id, "task ID")?;
    match *req.method() {
        Method::GET => {
            let r = state
                .tasks
                .get(id, who)
                .await
                .map_err(|s| ApiError::from_status(&s, "get"))?;
            let task = r.task.ok_or_else(missing_task)?;
            Ok(task_answer(StatusCode::OK, task))
        }
        Method::PUT => {
            let expected_version = if_match(&req)?;
            let b: UpdateBody = read_json(req, state.body_timeout()).await?;
            let r = state
                .tasks
                .update(
                    v1::UpdateTaskRequest {
                        id,
                        title: b.title,
                        description: b.description,
                        completed: b.completed,
                        expected_version,
                        // null unassigns (0 over gRPC).
                        assignee: b.assignee.map(|a| a.unwrap_or(0)),
                        due_at: match &b.due_at {
                            Some(Some(d)) => Some(time_field(d, "due_at")?),
                            _ => None,
                        },
                        clear_due_at: matches!(b.due_at, Some(None)),
                        position: b.position,
                    },
                    who,
                )
                .await
                .map_err(|s| ApiError::from_status(&s, "update"))?;
            let task = r.task.ok_or_else(missing_task)?;
            Ok(super::with_seq(task_answer(StatusCode::OK, task), r.seq))
        }
        _ => {
            let expected_version = if_match(&req)?;
            let r = state
                .tasks
                .delete(
                    v1::DeleteTaskRequest {
                        id,
                        expected_version,
                    },
                    who,
                )
                .await
                .map_err(|s| ApiError::from_status(&s, "delete"))?;
            Ok(super::with_seq(empty(StatusCode::NO_CONTENT), r.seq))
        }
    }
}

/// A path id: digits only (`+1`, ` 1` or `01x` are not 1), positive.
pub(super) fn positive_id(id: &str, what: &str) -> Result<i64, ApiError> {
    let digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| id.parse::<i64>().ok())
        .flatten()
        .filter(|i| *i > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!("Invalid {what}"))
                .with_message(format!("{what} must be a positive integer, got {id:?}"))
        })
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

async fn list(
    state: &AppState,
    query: Option<&str>,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    let mut board = None;
    let mut page = 0i32;
    let mut size = 0i32;
    let mut completed = None;
    let mut filter = v1::ListTasksRequest::default();
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
            // `none`: unassigned tasks.
            "assignee" if v == "none" => filter.assignee = Some(0),
            "assignee" if !v.is_empty() => {
                filter.assignee =
                    Some(v.parse::<i64>().ok().filter(|a| *a > 0).ok_or_else(|| {
                        ApiError::bad_request("Invalid assignee")
                            .with_message(format!("assignee must be a user ID or none, got {v:?}"))
                    })?);
            }
            "due_before" if !v.is_empty() => {
                filter.due_before = Some(time_field(&v, "due_before")?);
            }
            "sort" if !v.is_empty() => filter.sort = v.into_owned(),
            _ => {}
        }
    }
    let r = state
        .tasks
        .list(
            v1::ListTasksRequest {
                board_id: board.unwrap_or(0),
                completed,
                // REST's default page size is 10 (the original gateway's); the task service's own
                // default for 0 is the original gRPC default of 50.
                page_size: if size <= 0 { REST_PAGE_SIZE } else { size },
                page_number: page,
                ..filter
            },
            who,
        )
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
