//! `GET /api/boards/{id}/events` and `GET /api/tasks/{id}/events`: a board's (or a task's) log of
//! changes, each the event as the WebSocket sends it plus who made it and when it committed.
use chrono::{DateTime, SecondsFormat};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use taskboard_proto::v1;

use super::tasks::positive_id;
use super::{json, not_allowed, Resp};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

/// Events per page when `limit` is not given; the task service caps a page at 1000.
const DEFAULT_LIMIT: i32 = 100;
const MAX_LIMIT: i32 = 1000;

/// `GET /api/boards/{id}/events?after=&limit=`: 403 for a board the caller may not read.
pub(super) async fn board(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    let board_id = positive_id(id, "board ID")?;
    page(state, req, who, |after_seq, limit| v1::ListEventsRequest {
        board_id,
        after_seq,
        limit,
        ..Default::default()
    })
    .await
}

/// `GET /api/tasks/{id}/events?after=&limit=`: also of a deleted task; 404 for a task whose board
/// the caller may not read.
pub(super) async fn task(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    let task_id = positive_id(id, "task ID")?;
    page(state, req, who, |after_seq, limit| v1::ListEventsRequest {
        task_id,
        after_seq,
        limit,
        ..Default::default()
    })
    .await
}

async fn page(
    state: &AppState,
    req: Request<Incoming>,
    who: Option<&Principal>,
    request: impl FnOnce(i64, i32) -> v1::ListEventsRequest,
) -> Result<Resp, ApiError> {
    if req.method() != Method::GET {
        return Ok(not_allowed("GET, OPTIONS"));
    }
    let (after, limit) = page_query(req.uri().query())?;
    let r = state
        .tasks
        .history(request(after, limit), who)
        .await
        .map_err(|s| ApiError::from_status(&s, "history"))?;
    let events = r
        .events
        .iter()
        .map(entry)
        .collect::<Result<Vec<Value>, ApiError>>()?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "events": events, "head_seq": r.head_seq, "reset": r.reset }),
    ))
}

/// `after` (a seq, default 0) and `limit` (1 to 1000, default 100) of the query string.
fn page_query(query: Option<&str>) -> Result<(i64, i32), ApiError> {
    let mut after = 0;
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "after" => {
                after = v.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| {
                    ApiError::bad_request("Invalid after").with_message(format!(
                        "after must be a seq (an integer, 0 or more), got {v:?}"
                    ))
                })?;
            }
            "limit" => {
                limit = v
                    .parse::<i32>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request("Invalid limit").with_message(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}, got {v:?}"
                        ))
                    })?;
            }
            _ => {}
        }
    }
    Ok((after, limit))
}

/// The event as the WebSocket sends it, plus `actor` (the user who made the change; null without
/// one) and `committed_at`.
fn entry(e: &v1::Event) -> Result<Value, ApiError> {
    let mut m: Map<String, Value> = serde_json::from_slice(&e.payload).map_err(|err| {
        tracing::error!(board.id = e.board_id, seq = e.seq, error = %err, "an event payload is not a JSON object");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    })?;
    m.insert(
        "actor".into(),
        if e.actor == 0 {
            Value::Null
        } else {
            Value::from(e.actor)
        },
    );
    let at = e
        .committed_at
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    m.insert("committed_at".into(), Value::from(at));
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_and_limit_are_checked_and_default() {
        assert_eq!(page_query(None).unwrap(), (0, 100));
        assert_eq!(page_query(Some("after=7&limit=1000")).unwrap(), (7, 1000));
        for bad in [
            "after=-1",
            "after=x",
            "limit=0",
            "limit=1001",
            "limit=",
            "after=",
        ] {
            let e = page_query(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn an_entry_is_the_event_with_its_actor_and_commit_time() {
        let e = v1::Event {
            board_id: 1,
            seq: 2,
            kind: "created".into(),
            payload: br#"{"type":"created","seq":2}"#.to_vec().into(),
            committed_at: Some(taskboard_proto::prost_types::Timestamp {
                seconds: 1_795_801_831,
                nanos: 5_000,
            }),
            task_id: 3,
            actor: 0,
        };
        assert_eq!(
            entry(&e).unwrap(),
            serde_json::json!({"type": "created", "seq": 2, "actor": null,
                               "committed_at": "2026-11-27T17:50:31.000005Z"})
        );
        let by = v1::Event { actor: 9, ..e };
        assert_eq!(entry(&by).unwrap()["actor"], 9);
    }
}
