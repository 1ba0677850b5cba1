//! Event RPCs: a board's log (ListEvents, also a task's own history), the heads of many boards
//! (BoardHeads), and the watch streams (WatchTasks, WatchEvents; their loop is `streams`).
use taskboard_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::log::{needs_reset, reset_event, within_page_bytes};
use super::refusals::{not_a_member, not_found};
use super::streams::{task_of_event, WatchItem};
use super::Service;
use crate::access::Caller;
use crate::db::{self, EventRow, EventsOf};
use crate::validate;

/// Items buffered per WatchTasks/WatchEvents stream; a slow reader applies back-pressure to its
/// own stream only (the producer waits), never to the database or other streams.
const WATCH_BUFFER: usize = 64;
/// Most boards per BoardHeads call.
const MAX_HEADS: usize = 1000;

type WatchTasksStream = ReceiverStream<Result<v1::Task, Status>>;
type WatchEventsStream = ReceiverStream<Result<v1::Event, Status>>;

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
pub(super) async fn watch_tasks(
    service: &Service,
    req: Request<v1::ListTasksRequest>,
) -> Result<Response<WatchTasksStream>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let board = validate::board_id(req.get_ref().board_id)?;
            let completed = req.get_ref().completed;
            // The original's stream has no resume point: changes from now on.
            let head = service.readable_head(board, who).await?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let svc = service.clone();
            service.tracker.spawn(async move {
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

#[tracing::instrument(skip_all, fields(board.id = req.get_ref().board_id))]
pub(super) async fn watch_events(
    service: &Service,
    req: Request<v1::WatchEventsRequest>,
) -> Result<Response<WatchEventsStream>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let board = validate::board_id(req.get_ref().board_id)?;
            let since = req.get_ref().since_seq;
            if since < 0 {
                return Err(Status::invalid_argument("since_seq must not be negative"));
            }
            service.readable_head(board, who).await?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let svc = service.clone();
            service.tracker.spawn(async move {
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
pub(super) async fn board_heads(
    service: &Service,
    req: Request<v1::BoardHeadsRequest>,
) -> Result<Response<v1::BoardHeadsResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
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
            for h in db::heads(&service.pool, ids, who).await? {
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
pub(super) async fn list_events(
    service: &Service,
    req: Request<v1::ListEventsRequest>,
) -> Result<Response<v1::ListEventsResponse>, Status> {
    let who = Caller::of(&req);
    service
        .db_call(async move {
            let r = req.get_ref();
            if r.after_seq < 0 {
                return Err(Status::invalid_argument("after_seq must not be negative"));
            }
            let limit = i64::from(validate::events_limit(r.limit));
            if r.task_id != 0 {
                return service.task_history(r, limit, who).await;
            }
            let board = validate::board_id(r.board_id)?;
            let (mut events, head) = db::list_events(
                &service.pool,
                EventsOf::Board(board),
                r.after_seq,
                limit,
                who,
            )
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

impl Service {
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
}
