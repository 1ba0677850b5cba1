//! Task RPCs: create (alone, or a gateway's CreateTasks batch, each item on its own), read, list,
//! search, change and delete; the idempotency-key replay and the assignee check.
use taskboard_proto::v1;
use tonic::{Request, Response, Status};

use super::refusals::{not_a_member, not_found, version_mismatch};
use super::{Service, MAX_BATCH_CREATES};
use crate::access::{Caller, Vouch};
use crate::db;
use crate::{validate, Error};

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
pub(super) async fn create_task(
    service: &Service,
    req: Request<v1::CreateTaskRequest>,
) -> Result<Response<v1::CreateTaskResponse>, Status> {
    let who = Caller::of(&req);
    let (answer, replayed) = service.db_call(service.create(req.get_ref(), who)).await?;
    let mut answer = Response::new(answer);
    if replayed {
        answer.metadata_mut().insert(
            taskboard_proto::REPLAYED_METADATA,
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    Ok(answer)
}

pub(super) async fn create_tasks(
    service: &Service,
    req: Request<v1::CreateTasksRequest>,
) -> Result<Response<v1::CreateTasksResponse>, Status> {
    let vouch = match (Caller::of(&req), Vouch::of(&req)) {
        (Caller { user: None, .. }, Some(v)) => v,
        _ => {
            return Err(Status::permission_denied(
                "CreateTasks names each item's user: only the token holder calling for \
                 itself (without x-taskboard-user) may make it",
            ))
        }
    };
    let items = &req.get_ref().items;
    if items.len() > MAX_BATCH_CREATES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_BATCH_CREATES} items per CreateTasks call, got {}",
            items.len()
        )));
    }
    service.gate.check()?;
    // Each item as its own CreateTask, concurrently: the writer gathers them into one commit.
    let results = futures_util::future::join_all(items.iter().map(|item| {
        let span = tracing::info_span!("create_task", board.id = tracing::field::Empty);
        if !item.traceparent.is_empty() {
            taskboard_telemetry::otel::continue_from_traceparent(&span, &item.traceparent);
        }
        tracing::Instrument::instrument(service.create_item(item, vouch), span)
    }))
    .await;
    Ok(Response::new(v1::CreateTasksResponse { results }))
}

#[tracing::instrument(skip_all, fields(task.id = req.get_ref().id))]
pub(super) async fn get_task(
    service: &Service,
    req: Request<v1::GetTaskRequest>,
) -> Result<Response<v1::GetTaskResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let id = validate::task_id(req.get_ref().id)?;
            match db::get(&service.pool, id, who).await? {
                Some(task) => Ok(Response::new(v1::GetTaskResponse { task: Some(task) })),
                None => Err(not_found(id)),
            }
        })
        .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
pub(super) async fn list_tasks(
    service: &Service,
    req: Request<v1::ListTasksRequest>,
) -> Result<Response<v1::ListTasksResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            let board = validate::board_id(r.board_id)?;
            let (page, size) = validate::paging(r.page_number, r.page_size);
            let offset = (i64::from(page) - 1) * i64::from(size);
            let filter = db::TaskFilter {
                completed: r.completed,
                assignee: r.assignee.map(validate::assignee).transpose()?,
                due_before: r.due_before.as_ref().map(validate::due_at).transpose()?,
                sort: validate::sort(&r.sort)?,
            };
            let p = db::list(&service.pool, board, filter, i64::from(size), offset, who)
                .await?
                .ok_or_else(|| not_a_member(board))?;
            Ok(Response::new(v1::ListTasksResponse {
                tasks: p.tasks,
                total_count: i32::try_from(p.total).unwrap_or(i32::MAX),
                page_number: page,
                page_size: size,
                head_seq: p.head_seq,
            }))
        })
        .await
}

#[tracing::instrument(skip_all, fields(task.id = req.get_ref().id))]
pub(super) async fn update_task(
    service: &Service,
    req: Request<v1::UpdateTaskRequest>,
) -> Result<Response<v1::UpdateTaskResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            let mut ch = validate::change(
                r.id,
                r.title.as_deref(),
                r.description.as_deref(),
                r.completed,
            )?;
            ch.assignee = r.assignee.map(validate::assignee).transpose()?;
            ch.due_at = match (&r.due_at, r.clear_due_at) {
                (Some(_), true) => {
                    return Err(Status::invalid_argument(
                        "Send due_at or clear_due_at, not both",
                    ))
                }
                (Some(t), false) => db::Due::Set(validate::due_at(t)?),
                (None, true) => db::Due::Clear,
                (None, false) => db::Due::Keep,
            };
            ch.position = r.position.map(validate::position).transpose()?;
            if let Some(a) = ch.assignee.filter(|a| *a > 0) {
                if let Some(board) = db::task_board(&service.pool, ch.id).await? {
                    service.check_assignee(board, a).await?;
                }
            }
            let expected = r.expected_version;
            if ch.is_empty() {
                // Nothing to change: answer with the task as it is, and emit no event.
                return match db::get(&service.pool, ch.id, who).await? {
                    Some(task) if expected.is_some_and(|v| v != task.version) => {
                        Err(version_mismatch(&task, expected))
                    }
                    Some(task) => Ok(Response::new(v1::UpdateTaskResponse {
                        task: Some(task),
                        seq: 0,
                    })),
                    None => Err(not_found(ch.id)),
                };
            }
            match service
                .writer
                .apply(db::Mutation::update(&ch, expected), who)
                .await?
            {
                Some(a) => Ok(Response::new(v1::UpdateTaskResponse {
                    task: Some(a.task),
                    seq: a.event.seq,
                })),
                None => Err(service.task_refusal(ch.id, who, expected).await?),
            }
        })
        .await
}

#[tracing::instrument(skip_all, fields(task.id = req.get_ref().id))]
pub(super) async fn delete_task(
    service: &Service,
    req: Request<v1::DeleteTaskRequest>,
) -> Result<Response<v1::DeleteTaskResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let id = validate::task_id(req.get_ref().id)?;
            let expected = req.get_ref().expected_version;
            let delete = db::Mutation::Delete {
                id,
                expected_version: expected,
            };
            match service.writer.apply(delete, who).await? {
                Some(a) => Ok(Response::new(v1::DeleteTaskResponse {
                    success: true,
                    seq: a.event.seq,
                })),
                None => Err(service.task_refusal(id, who, expected).await?),
            }
        })
        .await
}

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
pub(super) async fn search_tasks(
    service: &Service,
    req: Request<v1::SearchTasksRequest>,
) -> Result<Response<v1::SearchTasksResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            let query = validate::search_query(&r.query)?;
            let board = match r.board_id {
                0 => None,
                b => Some(validate::board_id(b)?),
            };
            let (page, size) = validate::search_paging(r.page_number, r.page_size);
            let offset = (i64::from(page) - 1) * i64::from(size);
            let found = db::search(&service.pool, query, board, i64::from(size), offset, who)
                .await?
                .ok_or_else(|| not_a_member(board.unwrap_or_default()))?;
            Ok(Response::new(v1::SearchTasksResponse {
                hits: found.hits,
                total_count: i32::try_from(found.total).unwrap_or(i32::MAX),
                page_number: page,
                page_size: size,
            }))
        })
        .await
}

impl Service {
    /// One item of a CreateTasks call: CreateTask's answer or its error, as a result.
    pub(super) async fn create_item(
        &self,
        item: &v1::CreateTasksItem,
        vouch: Vouch,
    ) -> v1::CreateTasksResult {
        let outcome = async {
            let who = vouch.item(item.user, item.service_role)?;
            let r = item
                .request
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("an item without its request"))?;
            tracing::Span::current().record("board.id", r.board_id);
            self.db_call(self.create(r, who)).await
        }
        .await;
        match outcome {
            Ok((created, replayed)) => v1::CreateTasksResult {
                outcome: Some(v1::create_tasks_result::Outcome::Created(created)),
                replayed,
            },
            Err(s) => v1::CreateTasksResult {
                outcome: Some(v1::create_tasks_result::Outcome::Error(v1::ItemError {
                    code: s.code() as i32,
                    message: s.message().to_owned(),
                })),
                replayed: false,
            },
        }
    }

    /// A create for `who`; `true` when it answers a retry of an idempotent create.
    pub(super) async fn create(
        &self,
        r: &v1::CreateTaskRequest,
        who: Caller,
    ) -> Result<(v1::CreateTaskResponse, bool), Status> {
        let mut new = validate::new_task(r.board_id, &r.title, &r.description, r.created_by)?;
        new.assignee = Some(validate::assignee(r.assignee)?).filter(|a| *a > 0);
        new.due_at = r.due_at.as_ref().map(validate::due_at).transpose()?;
        new.position = r.position.map(validate::position).transpose()?;
        if let Some(a) = new.assignee {
            self.check_assignee(new.board_id, a).await?;
        }
        // The author is the user the call is made for, never what the body claims.
        if let Some(user) = who.user {
            new.created_by = user;
        }
        // Keys are the caller's own: another user's identical key is another key.
        let key = match r.idempotency_key.as_deref() {
            Some(k) => Some(format!(
                "{}:{}",
                who.user.map_or_else(|| "-".to_owned(), |u| u.to_string()),
                validate::idempotency_key(k)?
            )),
            None => None,
        };
        if let Some(k) = &key {
            if let Some(answer) = self.replayed(k, &new).await? {
                return Ok((answer, true));
            }
        }
        match self
            .writer
            .apply(db::Mutation::create(&new, key.clone()), who)
            .await
        {
            Ok(Some(a)) => Ok((
                v1::CreateTaskResponse {
                    task: Some(a.task),
                    seq: a.event.seq,
                },
                false,
            )),
            Ok(None) => Err(self.write_refusal(new.board_id, who).await?.into()),
            // A call with the same key committed first: answer what it answered.
            Err(Error::Db(e)) if key.is_some() && is_key_taken(&e) => {
                let k = key.as_deref().unwrap_or_default();
                match self.replayed(k, &new).await? {
                    Some(answer) => Ok((answer, true)),
                    None => Err(Error::Db(e).into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The first answer given under idempotency key `key`, when there is one within 24 h: the
    /// same task and seq, marked replayed; ALREADY_EXISTS if it was for another request.
    pub(super) async fn replayed(
        &self,
        key: &str,
        new: &db::NewTask<'_>,
    ) -> Result<Option<v1::CreateTaskResponse>, Status> {
        let Some((task, seq)) = db::idempotent(&self.pool, key).await? else {
            return Ok(None);
        };
        if (
            task.board_id,
            task.title.as_str(),
            task.description.as_str(),
        ) != (new.board_id, new.title, new.description)
        {
            return Err(Error::AlreadyExists(
                "this Idempotency-Key was already used for another request (a different board, \
                 title or description); use a new key for a new task"
                    .into(),
            )
            .into());
        }
        tracing::info!(task.id = task.id, "idempotent create replayed");
        Ok(Some(v1::CreateTaskResponse {
            task: Some(task),
            seq,
        }))
    }

    /// An assignee must be a member of the board (any user, on a board without members).
    pub(super) async fn check_assignee(&self, board: i64, user: i64) -> Result<(), Status> {
        if db::role(&self.pool, board, user).await?.is_some()
            || !db::boards::has_members(&self.pool, board).await?
        {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "Assignee {user} is not a member of board {board}"
        )))
    }
}

/// The idempotency key of a create was taken by a concurrent call with the same key.
fn is_key_taken(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && d.constraint() == Some("idempotency_keys_pkey")
    })
}
