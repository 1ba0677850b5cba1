//! `/api/boards…` and `/api/me`: boards, their members, and who the caller is.
use chrono::{DateTime, SecondsFormat};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use taskboard_proto::v1;

use super::body::read_json;
use super::tasks::positive_id;
use super::{empty, json, not_allowed, Resp};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

/// A board as the REST API shows it.
#[derive(Serialize)]
struct BoardJson {
    id: i64,
    name: String,
    /// 0 when made without a user.
    created_by: i64,
    created_at: String,
    head_seq: i64,
    /// The caller's role; absent for a caller who sees every board without being a member.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    description: String,
    /// Read-only while archived.
    archived: bool,
    archived_at: Option<String>,
}

fn rfc3339(t: taskboard_proto::prost_types::Timestamp) -> String {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl From<v1::Board> for BoardJson {
    fn from(b: v1::Board) -> Self {
        BoardJson {
            id: b.id,
            name: b.name,
            created_by: b.created_by,
            created_at: b.created_at.map(rfc3339).unwrap_or_default(),
            head_seq: b.head_seq,
            role: Some(b.role).filter(|r| !r.is_empty()),
            description: b.description,
            archived: b.archived_at.is_some(),
            archived_at: b.archived_at.map(rfc3339),
        }
    }
}

#[derive(Serialize)]
struct MemberJson {
    user_id: i64,
    role: String,
}

impl From<v1::Member> for MemberJson {
    fn from(m: v1::Member) -> Self {
        MemberJson {
            user_id: m.user_id,
            role: m.role,
        }
    }
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    archived: Option<bool>,
}

#[derive(Deserialize)]
struct MemberBody {
    #[serde(default)]
    role: Option<String>,
}

fn status(what: &'static str) -> impl Fn(tonic::Status) -> ApiError {
    move |s| ApiError::from_status(&s, what)
}

/// `GET /api/boards` (mine), `POST /api/boards` (a new one; I own it).
pub(super) async fn collection(
    state: &AppState,
    req: Request<Incoming>,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    match *req.method() {
        Method::GET => {
            let archived = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .any(|(k, v)| k == "archived" && v == "true");
            let boards = state
                .tasks
                .list_boards(archived, who)
                .await
                .map_err(status("list boards"))?;
            let boards: Vec<BoardJson> = boards.into_iter().map(BoardJson::from).collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "boards": boards }),
            ))
        }
        Method::POST => {
            let b: CreateBody = read_json(req, state.body_timeout()).await?;
            let board = state
                .tasks
                .create_board(
                    v1::CreateBoardRequest {
                        name: b.name.unwrap_or_default(),
                        description: b.description.unwrap_or_default(),
                    },
                    who,
                )
                .await
                .map_err(status("create board"))?;
            Ok(json(StatusCode::CREATED, &BoardJson::from(board)))
        }
        _ => Ok(not_allowed("GET, POST, OPTIONS")),
    }
}

/// `GET /api/boards/{id}`; `PUT` renames, describes, archives or unarchives it; `DELETE` deletes
/// it with its tasks and events (owners).
pub(super) async fn item(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    if !matches!(*req.method(), Method::GET | Method::PUT | Method::DELETE) {
        return Ok(not_allowed("GET, PUT, DELETE, OPTIONS"));
    }
    let id = positive_id(id, "board ID")?;
    match *req.method() {
        Method::GET => {
            let board = state
                .tasks
                .get_board(id, who)
                .await
                .map_err(status("get board"))?;
            Ok(json(StatusCode::OK, &BoardJson::from(board)))
        }
        Method::PUT => {
            let b: UpdateBody = read_json(req, state.body_timeout()).await?;
            if b.name.is_none() && b.description.is_none() && b.archived.is_none() {
                return Err(ApiError::bad_request("Nothing to change")
                    .with_message("send name, description or archived"));
            }
            let r = state
                .tasks
                .update_board(
                    v1::UpdateBoardRequest {
                        id,
                        name: b.name,
                        description: b.description,
                        archived: b.archived,
                    },
                    who,
                )
                .await
                .map_err(status("update board"))?;
            let board = r.board.ok_or_else(|| {
                ApiError::from_status(&tonic::Status::internal("no board"), "update board")
            })?;
            Ok(super::with_seq(
                json(StatusCode::OK, &BoardJson::from(board)),
                r.seq,
            ))
        }
        _ => {
            let seq = state
                .tasks
                .delete_board(id, who)
                .await
                .map_err(status("delete board"))?;
            Ok(super::with_seq(empty(StatusCode::NO_CONTENT), seq))
        }
    }
}

/// `GET /api/boards/{id}/members`.
pub(super) async fn members(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    if req.method() != Method::GET {
        return Ok(not_allowed("GET, OPTIONS"));
    }
    let id = positive_id(id, "board ID")?;
    let members = state
        .tasks
        .list_members(id, who)
        .await
        .map_err(status("list members"))?;
    let members: Vec<MemberJson> = members.into_iter().map(MemberJson::from).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "members": members }),
    ))
}

/// `PUT /api/boards/{id}/members/{user}` (`{"role": …}`, owners only) and `DELETE` (owners, or the
/// member leaving).
pub(super) async fn member(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
    user: &str,
    who: Option<&Principal>,
) -> Result<Resp, ApiError> {
    if !matches!(*req.method(), Method::PUT | Method::DELETE) {
        return Ok(not_allowed("PUT, DELETE, OPTIONS"));
    }
    let board_id = positive_id(id, "board ID")?;
    let user_id = positive_id(user, "user ID")?;
    if req.method() == Method::DELETE {
        state
            .tasks
            .remove_member(board_id, user_id, who)
            .await
            .map_err(status("remove member"))?;
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let b: MemberBody = read_json(req, state.body_timeout()).await?;
    let m = state
        .tasks
        .set_member(
            v1::SetMemberRequest {
                board_id,
                user_id,
                role: b.role.unwrap_or_default(),
            },
            who,
        )
        .await
        .map_err(status("set member"))?;
    Ok(json(StatusCode::OK, &MemberJson::from(m)))
}

/// `GET /api/me`: who the token names (or that authentication is off).
pub(super) fn me(req: &Request<Incoming>, who: Option<&Principal>, auth_on: bool) -> Resp {
    if req.method() != Method::GET {
        return not_allowed("GET, OPTIONS");
    }
    match who {
        Some(p) => json(
            StatusCode::OK,
            &serde_json::json!({
                "auth": "on",
                "user_id": p.user,
                "service": p.service,
                "expires_at": p.expires_at,
            }),
        ),
        None => json(
            StatusCode::OK,
            &serde_json::json!({ "auth": if auth_on { "on" } else { "off" } }),
        ),
    }
}
