//! The event log as readers see it: rows, a board's or a task's page (`list_events`), board heads.
use bytes::Bytes;
use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::Row;

use super::pool::acquire;
use super::{timestamp, Pool};
use crate::access::Caller;
use crate::Error;

/// An event row of the outbox.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub board_id: i64,
    pub seq: i64,
    pub kind: String,
    pub task_id: i64,
    pub payload: Bytes,
    pub committed_at: DateTime<Utc>,
    /// Who made the change (`None`: no user, or not read).
    pub actor: Option<i64>,
    /// The W3C `traceparent` of the request that committed it (tracing on; not stored).
    pub trace: Option<String>,
}

impl EventRow {
    /// Reads an event from `row` starting at column `at`
    /// (board_id, seq, kind, task_id, payload, created_at).
    pub(super) fn from_row(row: &Row, at: usize) -> Self {
        EventRow {
            board_id: row.get(at),
            seq: row.get(at + 1),
            kind: row.get(at + 2),
            task_id: row.get(at + 3),
            payload: Bytes::from(row.get::<_, String>(at + 4)),
            committed_at: row.get(at + 5),
            actor: None,
            trace: None,
        }
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> v1::Event {
        v1::Event {
            board_id: self.board_id,
            seq: self.seq,
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            committed_at: Some(timestamp(self.committed_at)),
            task_id: self.task_id,
            actor: self.actor.unwrap_or(0),
        }
    }
}

/// Which events [`list_events`] reads.
#[derive(Debug, Clone, Copy)]
pub enum EventsOf {
    Board(i64),
    /// One task's events, on its board.
    Task {
        board: i64,
        task: i64,
    },
}

/// The events of a board (or of one of its tasks) after `after_seq` (at most `limit`), and the
/// board's head seq; `None` when `who` may not read the board.
///
/// # Errors
/// Database or pool failure.
pub async fn list_events(
    pool: &Pool,
    of: EventsOf,
    after_seq: i64,
    limit: i64,
    who: Caller,
) -> Result<Option<(Vec<EventRow>, i64)>, Error> {
    let c = acquire(pool).await?;
    let rows = match of {
        EventsOf::Board(board) => {
            c.client
                .query(
                    &c.stmts.list_events,
                    &[&board, &after_seq, &limit, &who.user, &who.all_boards],
                )
                .await?
        }
        EventsOf::Task { board, task } => {
            c.client
                .query(
                    &c.stmts.task_events,
                    &[
                        &board,
                        &after_seq,
                        &limit,
                        &who.user,
                        &who.all_boards,
                        &task,
                    ],
                )
                .await?
        }
    };
    if !rows.first().is_some_and(|r| r.get::<_, bool>(7)) {
        return Ok(None);
    }
    let head: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
    let events = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(2).is_some())
        .map(|r| EventRow {
            actor: r.get(8),
            ..EventRow::from_row(r, 1)
        })
        .collect();
    Ok(Some((events, head)))
}

/// The board of a task's kept events (also of a deleted task), if it has any.
///
/// # Errors
/// Database or pool failure.
pub async fn event_task_board(pool: &Pool, task: i64) -> Result<Option<i64>, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_opt(&c.stmts.event_task_board, &[&task])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The head seq of each of `boards` (0 without events), and whether `who` may read it.
///
/// # Errors
/// Database or pool failure.
pub async fn heads(pool: &Pool, boards: &[i64], who: Caller) -> Result<Vec<BoardHead>, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(&c.stmts.heads, &[&boards, &who.user, &who.all_boards])
        .await?;
    Ok(rows
        .iter()
        .map(|r| BoardHead {
            board: r.get(0),
            head: r.get(1),
            readable: r.get(2),
        })
        .collect())
}

/// One answer of [`heads`].
pub struct BoardHead {
    pub board: i64,
    pub head: i64,
    pub readable: bool,
}
