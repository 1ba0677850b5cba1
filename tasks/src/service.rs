//! The `task.v1.TaskService` gRPC implementation.

use taskboard_proto::v1::{self, task_service_server::TaskService};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::access::{Caller, Role, Vouch};
use crate::db::{self, boards::BoardRow, EventRow, EventsOf, Pool};
use crate::gate::DbGate;
use crate::streams::{task_of_event, WatchItem};
use crate::writer::Writer;
use crate::{validate, Error};

/// Items buffered per WatchTasks/WatchEvents stream; a slow reader applies back-pressure to its
/// own stream only (the producer waits), never to the database or other streams.
const WATCH_BUFFER: usize = 64;
/// Most boards per BoardHeads call.
const MAX_HEADS: usize = 1000;
/// Most items per CreateTasks call.
pub const MAX_BATCH_CREATES: usize = 1000;

/// Shared state of the service.
#[derive(Clone)]
pub struct Service {
    pub pool: Pool,
    /// Task mutations go through the group committer.
    pub writer: Writer,
    /// Board events go straight to the relay once committed (the relay's scan is the safety net).
    pub committed: mpsc::Sender<Vec<EventRow>>,
    /// Changes whenever an event commits (fed by the relay's LISTEN session).
    pub wake: watch::Receiver<u64>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Closed while the database is known to be down: calls fail fast with UNAVAILABLE.
    pub gate: DbGate,
}

/// How many of `events` fit in a page of `budget` bytes (0, or more than
/// [`taskboard_proto::EVENTS_PAGE_BYTES`], means that); at least one, so a single large event
/// still goes through.
fn within_page_bytes(events: &[EventRow], budget: i32) -> usize {
    let budget = usize::try_from(budget)
        .ok()
        .filter(|b| *b > 0)
        .map_or(taskboard_proto::EVENTS_PAGE_BYTES, |b| {
            b.min(taskboard_proto::EVENTS_PAGE_BYTES)
        });
    let mut total = 0;
    events
        .iter()
        .take_while(|e| {
            total += e.payload.len();
            total <= budget
        })
        .count()
        .max(events.len().min(1))
}

/// Whether a reader at `after_seq` has missed events that are no longer kept (or is ahead of the
/// board): then it must reload and continue from `head`.
pub(crate) fn needs_reset(after_seq: i64, head: i64, events: &[EventRow]) -> bool {
    if after_seq > head {
        return true;
    }
    after_seq < head && events.first().is_none_or(|e| e.seq != after_seq + 1)
}

/// The `reset` event: "reload the board, then continue from `head`".
fn reset_event(board_id: i64, head: i64) -> v1::Event {
    v1::Event {
        board_id,
        seq: head,
        kind: taskboard_proto::nats::KIND_RESET.into(),
        payload: taskboard_proto::nats::reset_payload(board_id, head).into(),
        committed_at: None,
        task_id: 0,
        actor: 0,
    }
}

#[tonic::async_trait]
impl TaskService for Service {
    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
    async fn create_task(
        &self,
        req: Request<v1::CreateTaskRequest>,
    ) -> Result<Response<v1::CreateTaskResponse>, Status> {
        let who = Caller::of(&req);
        let (answer, replayed) = self.db_call(self.create(req.get_ref(), who)).await?;
        let mut answer = Response::new(answer);
        if replayed {
            answer.metadata_mut().insert(
                taskboard_proto::REPLAYED_METADATA,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(answer)
    }

    async fn create_tasks(
        &self,
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
        self.gate.check()?;
        // Each item as its own CreateTask, concurrently: the writer gathers them into one commit.
        let results = futures_util::future::join_all(items.iter().map(|item| {
            let span = tracing::info_span!("create_task", board.id = tracing::field::Empty);
            if !item.traceparent.is_empty() {
                taskboard_telemetry::otel::continue_from_traceparent(&span, &item.traceparent);
            }
            tracing::Instrument::instrument(self.create_item(item, vouch), span)
        }))
        .await;
        Ok(Response::new(v1::CreateTasksResponse { results }))
    }

    #[tracing::instrument(skip_all, fields(task.id = req.get_ref().id))]
    async fn get_task(
        &self,
        req: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::GetTaskResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let id = validate::task_id(req.get_ref().id)?;
            match db::get(&self.pool, id, who).await? {
                Some(task) => Ok(Response::new(v1::GetTaskResponse { task: Some(task) })),
                None => Err(not_found(id)),
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
    async fn list_tasks(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
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
            let p = db::list(&self.pool, board, filter, i64::from(size), offset, who)
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
    async fn update_task(
        &self,
        req: Request<v1::UpdateTaskRequest>,
    ) -> Result<Response<v1::UpdateTaskResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
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
                if let Some(board) = db::task_board(&self.pool, ch.id).await? {
                    self.check_assignee(board, a).await?;
                }
            }
            let expected = r.expected_version;
            if ch.is_empty() {
                // Nothing to change: answer with the task as it is, and emit no event.
                return match db::get(&self.pool, ch.id, who).await? {
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
            match self
                .writer
                .apply(db::Mutation::update(&ch, expected), who)
                .await?
            {
                Some(a) => Ok(Response::new(v1::UpdateTaskResponse {
                    task: Some(a.task),
                    seq: a.event.seq,
                })),
                None => Err(self.task_refusal(ch.id, who, expected).await?),
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(task.id = req.get_ref().id))]
    async fn delete_task(
        &self,
        req: Request<v1::DeleteTaskRequest>,
    ) -> Result<Response<v1::DeleteTaskResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let id = validate::task_id(req.get_ref().id)?;
            let expected = req.get_ref().expected_version;
            let delete = db::Mutation::Delete {
                id,
                expected_version: expected,
            };
            match self.writer.apply(delete, who).await? {
                Some(a) => Ok(Response::new(v1::DeleteTaskResponse {
                    success: true,
                    seq: a.event.seq,
                })),
                None => Err(self.task_refusal(id, who, expected).await?),
            }
        })
        .await
    }

    type WatchTasksStream = ReceiverStream<Result<v1::Task, Status>>;

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
    async fn watch_tasks(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let board = validate::board_id(req.get_ref().board_id)?;
            let completed = req.get_ref().completed;
            // The original's stream has no resume point: changes from now on.
            let head = self.readable_head(board, who).await?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let svc = self.clone();
            self.tracker.spawn(async move {
                svc.watch(board, head, who, tx, move |e| match e {
                    WatchItem::Event(e) => {
                        task_of_event(e).filter(|t| completed.is_none_or(|c| t.completed == c))
                    }
                    // Nothing the original's message can say; the stream goes on from head.
                    WatchItem::Reset(_) => None,
                })
                .await
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }

    type WatchEventsStream = ReceiverStream<Result<v1::Event, Status>>;

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
    async fn watch_events(
        &self,
        req: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let board = validate::board_id(req.get_ref().board_id)?;
            let since = req.get_ref().since_seq;
            if since < 0 {
                return Err(Status::invalid_argument("since_seq must not be negative"));
            }
            self.readable_head(board, who).await?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let svc = self.clone();
            self.tracker.spawn(async move {
                svc.watch(board, since, who, tx, move |e| {
                    Some(match e {
                        WatchItem::Event(e) => e.to_proto(),
                        WatchItem::Reset(head) => reset_event(board, head),
                    })
                })
                .await
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(boards = req.get_ref().board_ids.len()))]
    async fn board_heads(
        &self,
        req: Request<v1::BoardHeadsRequest>,
    ) -> Result<Response<v1::BoardHeadsResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let ids = &req.get_ref().board_ids;
            if ids.len() > MAX_HEADS {
                return Err(Status::invalid_argument(format!(
                    "at most {MAX_HEADS} board_ids per call"
                )));
            }
            for b in ids {
                validate::board_id(*b)?;
            }
            let mut heads = std::collections::HashMap::with_capacity(ids.len());
            for h in db::heads(&self.pool, ids, who).await? {
                if !h.readable {
                    return Err(not_a_member(h.board));
                }
                heads.insert(h.board, h.head);
            }
            Ok(Response::new(v1::BoardHeadsResponse { heads }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
    async fn list_events(
        &self,
        req: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let r = req.get_ref();
            if r.after_seq < 0 {
                return Err(Status::invalid_argument("after_seq must not be negative"));
            }
            let limit = i64::from(validate::events_limit(r.limit));
            if r.task_id != 0 {
                return self.task_history(r, limit, who).await;
            }
            let board = validate::board_id(r.board_id)?;
            let (mut events, head) =
                db::list_events(&self.pool, EventsOf::Board(board), r.after_seq, limit, who)
                    .await?
                    .ok_or_else(|| not_a_member(board))?;
            let reset = needs_reset(r.after_seq, head, &events);
            events.truncate(within_page_bytes(&events, r.max_bytes));
            Ok(Response::new(v1::ListEventsResponse {
                events: if reset {
                    Vec::new()
                } else {
                    events.iter().map(EventRow::to_proto).collect()
                },
                head_seq: head,
                reset,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
    async fn search_tasks(
        &self,
        req: Request<v1::SearchTasksRequest>,
    ) -> Result<Response<v1::SearchTasksResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let r = req.get_ref();
            let query = validate::search_query(&r.query)?;
            let board = match r.board_id {
                0 => None,
                b => Some(validate::board_id(b)?),
            };
            let (page, size) = validate::search_paging(r.page_number, r.page_size);
            let offset = (i64::from(page) - 1) * i64::from(size);
            let found = db::search(&self.pool, query, board, i64::from(size), offset, who)
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

    #[tracing::instrument(skip_all)]
    async fn create_board(
        &self,
        req: Request<v1::CreateBoardRequest>,
    ) -> Result<Response<v1::CreateBoardResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let r = req.get_ref();
            let name = validate::board_name(&r.name)?;
            let description = validate::board_description(&r.description)?;
            let b = db::boards::create(&self.pool, name, description, who.user).await?;
            tracing::info!(board.id = b.id, user = ?who.user, "board created");
            Ok(Response::new(v1::CreateBoardResponse {
                board: Some(b.to_proto()),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().id))]
    async fn get_board(
        &self,
        req: Request<v1::GetBoardRequest>,
    ) -> Result<Response<v1::GetBoardResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let id = validate::board_id(req.get_ref().id)?;
            let b = self.require(id, who, Role::Viewer).await?;
            Ok(Response::new(v1::GetBoardResponse {
                board: Some(b.to_proto()),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_boards(
        &self,
        req: Request<v1::ListBoardsRequest>,
    ) -> Result<Response<v1::ListBoardsResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let archived = req.get_ref().include_archived;
            let boards = db::boards::list(&self.pool, who, archived).await?;
            Ok(Response::new(v1::ListBoardsResponse {
                boards: boards.iter().map(db::boards::BoardRow::to_proto).collect(),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().id))]
    async fn update_board(
        &self,
        req: Request<v1::UpdateBoardRequest>,
    ) -> Result<Response<v1::UpdateBoardResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
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
            self.require(id, who, least).await?;
            let (board, event) = db::boards::update(&self.pool, id, &change, who).await?;
            tracing::info!(board.id = id, seq = event.seq, user = ?who.user, "board updated");
            let seq = event.seq;
            self.publish_now(event);
            Ok(Response::new(v1::UpdateBoardResponse {
                board: Some(board.to_proto()),
                seq,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().id))]
    async fn delete_board(
        &self,
        req: Request<v1::DeleteBoardRequest>,
    ) -> Result<Response<v1::DeleteBoardResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let id = validate::board_id(req.get_ref().id)?;
            self.require(id, who, Role::Owner).await?;
            let event = db::boards::delete(&self.pool, id, who).await?;
            tracing::info!(board.id = id, seq = event.seq, user = ?who.user, "board deleted with its tasks and events");
            let seq = event.seq;
            self.publish_now(event);
            Ok(Response::new(v1::DeleteBoardResponse { seq }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
    async fn list_members(
        &self,
        req: Request<v1::ListMembersRequest>,
    ) -> Result<Response<v1::ListMembersResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let board = validate::board_id(req.get_ref().board_id)?;
            self.require(board, who, Role::Viewer).await?;
            let members = db::boards::members(&self.pool, board).await?;
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
    async fn set_member(
        &self,
        req: Request<v1::SetMemberRequest>,
    ) -> Result<Response<v1::SetMemberResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let r = req.get_ref();
            let board = validate::board_id(r.board_id)?;
            let user = validate::user_id(r.user_id)?;
            let role = validate::role(&r.role)?;
            self.require(board, who, Role::Owner).await?;
            db::boards::set_member(&self.pool, board, user, Some(role)).await?;
            tracing::info!(by = ?who.user, role = role.as_str(), "member set");
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
    async fn remove_member(
        &self,
        req: Request<v1::RemoveMemberRequest>,
    ) -> Result<Response<v1::RemoveMemberResponse>, Status> {
        let who = Caller::of(&req);
        self.db_call(async move {
            let r = req.get_ref();
            let board = validate::board_id(r.board_id)?;
            let user = validate::user_id(r.user_id)?;
            // Owners remove anyone; every member may leave.
            let least = if who.user == Some(user) {
                Role::Viewer
            } else {
                Role::Owner
            };
            self.require(board, who, least).await?;
            if !db::boards::set_member(&self.pool, board, user, None).await? {
                return Err(Error::NotFound(format!(
                    "user {user} is not a member of board {board}"
                ))
                .into());
            }
            tracing::info!(by = ?who.user, "member removed");
            Ok(Response::new(v1::RemoveMemberResponse {}))
        })
        .await
    }
}

impl Service {
    /// One item of a CreateTasks call: CreateTask's answer or its error, as a result.
    async fn create_item(&self, item: &v1::CreateTasksItem, vouch: Vouch) -> v1::CreateTasksResult {
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
    async fn create(
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
    async fn replayed(
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

    /// Runs a call that needs the database: at once UNAVAILABLE while it is known to be down, and
    /// a connection failure closes the gate for the calls that follow.
    /// An assignee must be a member of the board (any user, on a board without members).
    async fn check_assignee(&self, board: i64, user: i64) -> Result<(), Status> {
        if db::role(&self.pool, board, user).await?.is_some()
            || !db::boards::has_members(&self.pool, board).await?
        {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "Assignee {user} is not a member of board {board}"
        )))
    }

    /// Hands a committed board event to the relay; when its queue is full the relay's scan
    /// publishes it instead.
    fn publish_now(&self, event: EventRow) {
        if self.committed.try_send(vec![event]).is_err() {
            tracing::debug!("relay queue full: the scan publishes the board event");
        }
    }

    async fn db_call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.gate.run(f).await
    }

    /// A task's own events (ListEvents with `task_id`): NOT_FOUND when none are kept, when
    /// `board_id` is given and is not the task's, or when the caller may not read its board (so
    /// task ids of other boards reveal nothing).
    async fn task_history(
        &self,
        r: &v1::ListEventsRequest,
        limit: i64,
        who: Caller,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let task = r.task_id;
        if task < 0 {
            return Err(Status::invalid_argument("task_id must be positive"));
        }
        let board = match db::event_task_board(&self.pool, task).await? {
            Some(b) if r.board_id == 0 || r.board_id == b => b,
            _ => return Err(not_found(task)),
        };
        let of = EventsOf::Task { board, task };
        let (mut events, head) = db::list_events(&self.pool, of, r.after_seq, limit, who)
            .await?
            .ok_or_else(|| not_found(task))?;
        events.truncate(within_page_bytes(&events, r.max_bytes));
        Ok(Response::new(v1::ListEventsResponse {
            events: events.iter().map(EventRow::to_proto).collect(),
            head_seq: head,
            reset: false,
        }))
    }

    /// The board, when `who` holds at least `least` on it (or sees every board).
    async fn require(&self, board: i64, who: Caller, least: Role) -> Result<BoardRow, Error> {
        let b = db::boards::get(&self.pool, board, who.user)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Board {board} not found")))?;
        if who.all_boards {
            return Ok(b);
        }
        match b.role {
            None => Err(Error::PermissionDenied(format!(
                "you are not a member of board {board}"
            ))),
            Some(r) if r < least => Err(Error::PermissionDenied(format!(
                "you are {} of board {board}; this needs the {} role",
                article(r),
                least.as_str()
            ))),
            Some(_) => Ok(b),
        }
    }

    /// The head seq of `board`, when `who` may read it.
    async fn readable_head(&self, board: i64, who: Caller) -> Result<i64, Status> {
        match db::heads(&self.pool, &[board], who).await?.first() {
            Some(h) if h.readable => Ok(h.head),
            _ => Err(not_a_member(board)),
        }
    }

    /// Why `who` could not create a task on `board`.
    async fn write_refusal(&self, board: i64, who: Caller) -> Result<Error, Error> {
        let role = match who.user {
            Some(u) => db::role(&self.pool, board, u).await?,
            None => None,
        };
        Ok(match role {
            Some(r) => Error::PermissionDenied(format!(
                "you are {} of board {board}; changing tasks needs the editor role",
                article(r)
            )),
            None => Error::PermissionDenied(format!("you are not a member of board {board}")),
        })
    }

    /// Why a change of task `id` matched nothing: it does not exist or its board is not the
    /// caller's (404 either way, so task ids of other boards reveal nothing), the caller only
    /// views the board (403), or it is no longer at the `expected` version (412 over REST).
    async fn task_refusal(
        &self,
        id: i64,
        who: Caller,
        expected: Option<i64>,
    ) -> Result<Status, Error> {
        let Some(board) = db::task_board(&self.pool, id).await? else {
            return Ok(not_found(id));
        };
        let role = match who.user {
            Some(u) => db::role(&self.pool, board, u).await?,
            None => None,
        };
        Ok(match role {
            Some(r) if r < Role::Editor => Status::from(Error::PermissionDenied(format!(
                "you are {} of board {board}; changing tasks needs the editor role",
                article(r)
            ))),
            _ => match expected {
                // Readable (so a member, or every board is the caller's) and at another version.
                Some(_) => match db::get(&self.pool, id, who).await? {
                    Some(task) if expected != Some(task.version) => {
                        version_mismatch(&task, expected)
                    }
                    _ => not_found(id),
                },
                // Not a member, or (rarely) a concurrent delete or membership change.
                None => not_found(id),
            },
        })
    }
}

/// "a viewer", "an editor", "an owner".
fn article(r: Role) -> String {
    match r {
        Role::Viewer => "a viewer".into(),
        Role::Editor => "an editor".into(),
        Role::Owner => "an owner".into(),
    }
}

/// The idempotency key of a create was taken by a concurrent call with the same key.
fn is_key_taken(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && d.constraint() == Some("idempotency_keys_pkey")
    })
}

/// FAILED_PRECONDITION: `task` is not at the version the caller expected.
fn version_mismatch(task: &v1::Task, expected: Option<i64>) -> Status {
    Status::from(Error::VersionMismatch {
        id: task.id,
        current: task.version,
        expected: expected.unwrap_or_default(),
    })
}

fn not_found(id: i64) -> Status {
    Status::from(Error::NotFound(format!("Task {id} not found")))
}

/// PERMISSION_DENIED for a board the caller may not read.
pub(crate) fn not_a_member(board: i64) -> Status {
    Status::from(Error::PermissionDenied(format!(
        "you are not a member of board {board}"
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event of board 1 with an empty payload (shared with the streams' tests).
    pub(crate) fn ev(seq: i64) -> EventRow {
        EventRow {
            board_id: 1,
            seq,
            kind: "created".into(),
            task_id: 1,
            payload: bytes::Bytes::new(),
            committed_at: chrono::Utc::now(),
            actor: None,
            trace: None,
        }
    }

    #[test]
    fn a_page_stops_before_its_payloads_pass_the_byte_budget() {
        let big = |seq| EventRow {
            payload: bytes::Bytes::from(vec![b'x'; 1024 * 1024 + 1]),
            ..ev(seq)
        };
        let events: Vec<EventRow> = (1..=10).map(big).collect();
        assert_eq!(within_page_bytes(&events, 0), 3);
        assert_eq!(within_page_bytes(&events, i32::MAX), 3, "never past 4 MiB");
        assert_eq!(within_page_bytes(&events, 2_200_000), 2, "a smaller budget");
        assert_eq!(within_page_bytes(&[ev(1), ev(2)], 0), 2);
        let huge = EventRow {
            payload: bytes::Bytes::from(vec![b'x'; 5 * 1024 * 1024]),
            ..ev(1)
        };
        assert_eq!(within_page_bytes(&[huge], 1), 1, "one event always goes");
        assert_eq!(within_page_bytes(&[], 0), 0);
    }

    #[test]
    fn reader_at_head_needs_no_reset() {
        assert!(!needs_reset(5, 5, &[]));
        assert!(!needs_reset(0, 0, &[]));
    }

    #[test]
    fn contiguous_events_need_no_reset() {
        assert!(!needs_reset(3, 5, &[ev(4), ev(5)]));
    }

    #[test]
    fn pruned_events_need_a_reset() {
        assert!(needs_reset(3, 9, &[ev(7), ev(8), ev(9)]));
        assert!(needs_reset(3, 9, &[]));
    }

    #[test]
    fn a_reader_ahead_of_the_board_needs_a_reset() {
        assert!(needs_reset(10, 4, &[]));
    }
}
