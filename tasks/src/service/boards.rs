//! Board and member RPCs: create, read, list, rename or archive, delete; members listed, set and
//! removed (the rules that span rows live in `db::boards`). Board changes are events too.
use taskboard_proto::v1;
use tonic::{Request, Response, Status};

use super::Service;
use crate::access::{Caller, Role};
use crate::db;
use crate::{validate, Error};

#[tracing::instrument(skip_all)]
pub(super) async fn create_board(
    service: &Service,
    req: Request<v1::CreateBoardRequest>,
) -> Result<Response<v1::CreateBoardResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            let name = validate::board_name(&r.name)?;
            let description = validate::board_description(&r.description)?;
            let b = db::boards::create(&service.pool, name, description, who.user).await?;
            tracing::info!(board.id = b.id, user = ?who.user, "board created");
            Ok(Response::new(v1::CreateBoardResponse {
                board: Some(b.to_proto()),
            }))
        })
        .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().id))]
pub(super) async fn get_board(
    service: &Service,
    req: Request<v1::GetBoardRequest>,
) -> Result<Response<v1::GetBoardResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let id = validate::board_id(req.get_ref().id)?;
            let b = service.require(id, who, Role::Viewer).await?;
            Ok(Response::new(v1::GetBoardResponse {
                board: Some(b.to_proto()),
            }))
        })
        .await
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_boards(
    service: &Service,
    req: Request<v1::ListBoardsRequest>,
) -> Result<Response<v1::ListBoardsResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let archived = req.get_ref().include_archived;
            let boards = db::boards::list(&service.pool, who, archived).await?;
            Ok(Response::new(v1::ListBoardsResponse {
                boards: boards.iter().map(db::boards::BoardRow::to_proto).collect(),
            }))
        })
        .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().id))]
pub(super) async fn update_board(
    service: &Service,
    req: Request<v1::UpdateBoardRequest>,
) -> Result<Response<v1::UpdateBoardResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            let id = validate::board_id(r.id)?;
            let change = db::boards::BoardChange {
                name: r.name.as_deref().map(validate::board_name).transpose()?,
                description: r
                    .description
                    .as_deref()
                    .map(validate::board_description)
                    .transpose()?,
                archived: r.archived,
            };
            // Archiving is the owner's; the rest any editor's.
            let least = if change.archived.is_some() {
                Role::Owner
            } else {
                Role::Editor
            };
            service.require(id, who, least).await?;
            let (board, event) = db::boards::update(&service.pool, id, &change, who).await?;
            tracing::info!(board.id = id, seq = event.seq, user = ?who.user, "board updated");
            let seq = event.seq;
            service.publish_now(event);
            Ok(Response::new(v1::UpdateBoardResponse {
                board: Some(board.to_proto()),
                seq,
            }))
        })
        .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().id))]
pub(super) async fn delete_board(
    service: &Service,
    req: Request<v1::DeleteBoardRequest>,
) -> Result<Response<v1::DeleteBoardResponse>, Status> {
    let who = Caller::of(&req);
    service.db_call(async move {
        let id = validate::board_id(req.get_ref().id)?;
        service.require(id, who, Role::Owner).await?;
        let event = db::boards::delete(&service.pool, id, who).await?;
        tracing::info!(board.id = id, seq = event.seq, user = ?who.user, "board deleted with its tasks and events");
        let seq = event.seq;
        service.publish_now(event);
        Ok(Response::new(v1::DeleteBoardResponse { seq }))
    })
    .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
pub(super) async fn list_members(
    service: &Service,
    req: Request<v1::ListMembersRequest>,
) -> Result<Response<v1::ListMembersResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let board = validate::board_id(req.get_ref().board_id)?;
            service.require(board, who, Role::Viewer).await?;
            let members = db::members::members(&service.pool, board).await?;
            Ok(Response::new(v1::ListMembersResponse {
                members: members
                    .into_iter()
                    .map(|(user_id, role)| v1::Member {
                        user_id,
                        role: role.as_str().into(),
                    })
                    .collect(),
            }))
        })
        .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id, member = req.get_ref().user_id))]
pub(super) async fn set_member(
    service: &Service,
    req: Request<v1::SetMemberRequest>,
) -> Result<Response<v1::SetMemberResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            let board = validate::board_id(r.board_id)?;
            let user = validate::user_id(r.user_id)?;
            let role = validate::role(&r.role)?;
            service.require(board, who, Role::Owner).await?;
            let change =
                db::members::set_member(&service.pool, board, user, Some(role), who.user).await?;
            tracing::info!(by = ?who.user, role = role.as_str(), before = ?change.before.map(Role::as_str), "member set");
            if let Some(event) = change.event {
                service.publish_now(event);
            }
            Ok(Response::new(v1::SetMemberResponse {
                member: Some(v1::Member {
                    user_id: user,
                    role: role.as_str().into(),
                }),
            }))
        })
        .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id, member = req.get_ref().user_id))]
pub(super) async fn remove_member(
    service: &Service,
    req: Request<v1::RemoveMemberRequest>,
) -> Result<Response<v1::RemoveMemberResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            let board = validate::board_id(r.board_id)?;
            let user = validate::user_id(r.user_id)?;
            // Owners remove anyone; every member may leave.
            let least = if who.user == Some(user) {
                Role::Viewer
            } else {
                Role::Owner
            };
            service.require(board, who, least).await?;
            let change =
                db::members::set_member(&service.pool, board, user, None, who.user).await?;
            if change.before.is_none() {
                return Err(Error::NotFound(format!(
                    "user {user} is not a member of board {board}"
                ))
                .into());
            }
            tracing::info!(by = ?who.user, "member removed");
            if let Some(event) = change.event {
                service.publish_now(event);
            }
            Ok(Response::new(v1::RemoveMemberResponse {}))
        })
        .await
}

#[tracing::instrument(skip_all)]
pub(super) async fn resolve_user(
    service: &Service,
    req: Request<v1::ResolveUserRequest>,
) -> Result<Response<v1::ResolveUserResponse>, Status> {
    let who = Caller::of(&req);
    // The token holder itself (the gateway), or anyone with authentication off.
    if who.user.is_some() || !who.all_boards {
        return Err(Status::permission_denied(
            "ResolveUser is for the service token's holder, not for calls made for a user",
        ));
    }
    service
        .db_call(async move {
            let r = req.get_ref();
            let subject = validate::subject(&r.subject)?;
            let issuer = validate::issuer(&r.issuer)?;
            let (user_id, created) = db::subjects::resolve(&service.pool, issuer, subject).await?;
            if created {
                tracing::info!(issuer, subject, user_id, "new user of an identity provider");
            }
            Ok(Response::new(v1::ResolveUserResponse { user_id, created }))
        })
        .await
}
