//! PostgreSQL access: the queries and their row mapping. The pool lives in `pool`, the SQL text in
//! `statements`, the migrations in `migrate`.
pub mod boards;
mod migrate;
mod pool;
mod statements;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::Row;

pub use migrate::migrate;
pub use pool::{connect, pool, Manager, PgConn, Pool};
pub use statements::Statements;

use crate::access::{Caller, Role};
use crate::Error;
use pool::acquire;

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Reads a task from `row`, starting at column `at` (columns as in `TASK_COLS`).
fn task_from_row(row: &Row, at: usize) -> v1::Task {
    v1::Task {
        id: row.get(at),
        board_id: row.get(at + 1),
        title: row.get(at + 2),
        description: row.get(at + 3),
        completed: row.get(at + 4),
        created_by: row.get(at + 5),
        created_at: Some(timestamp(row.get(at + 6))),
        updated_at: Some(timestamp(row.get(at + 7))),
        version: row.get(at + 8),
    }
}

/// A validated new task.
pub struct NewTask<'a> {
    pub board_id: i64,
    pub title: &'a str,
    pub description: &'a str,
    pub created_by: i64,
}

/// A validated change; `None` leaves a field as it is.
pub struct Change<'a> {
    pub id: i64,
    pub title: Option<&'a str>,
    pub description: Option<&'a str>,
    pub completed: Option<bool>,
}

/// Inserts a task; returns it with the seq of its `created` event, or `None` when `who` may not
/// change the board's tasks.
///
/// # Errors
/// Database or pool failure.
pub async fn create(
    pool: &Pool,
    t: &NewTask<'_>,
    who: Caller,
) -> Result<Option<(v1::Task, i64)>, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_opt(
            &c.stmts.create,
            &[
                &t.board_id,
                &t.title,
                &t.description,
                &t.created_by,
                &who.user,
                &who.all_boards,
            ],
        )
        .await?;
    Ok(row.map(|r| (task_from_row(&r, 0), r.get(9))))
}

/// One task, or `None` (also when `who` may not read its board).
///
/// # Errors
/// Database or pool failure.
pub async fn get(pool: &Pool, id: i64, who: Caller) -> Result<Option<v1::Task>, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_opt(&c.stmts.get, &[&id, &who.user, &who.all_boards])
        .await?;
    Ok(row.map(|r| task_from_row(&r, 0)))
}

/// `user`'s role on `board`, if a member.
///
/// # Errors
/// Database or pool failure.
pub async fn role(pool: &Pool, board: i64, user: i64) -> Result<Option<Role>, Error> {
    let c = acquire(pool).await?;
    let row = c.client.query_opt(&c.stmts.role, &[&board, &user]).await?;
    Ok(row.and_then(|r| Role::parse(r.get(0))))
}

/// The board of a task, if it exists.
///
/// # Errors
/// Database or pool failure.
pub async fn task_board(pool: &Pool, id: i64) -> Result<Option<i64>, Error> {
    let c = acquire(pool).await?;
    let row = c.client.query_opt(&c.stmts.task_board, &[&id]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// A page of a board's tasks, newest first (id breaks ties), with the total matching count and the
/// board's head seq, all from one snapshot.
pub struct TaskPage {
    pub tasks: Vec<v1::Task>,
    pub total: i64,
    pub head_seq: i64,
}

/// Reads a [`TaskPage`]; `None` when `who` may not read the board.
///
/// # Errors
/// Database or pool failure.
pub async fn list(
    pool: &Pool,
    board_id: i64,
    completed: Option<bool>,
    limit: i64,
    offset: i64,
    who: Caller,
) -> Result<Option<TaskPage>, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(
            &c.stmts.list,
            &[
                &board_id,
                &completed,
                &limit,
                &offset,
                &who.user,
                &who.all_boards,
            ],
        )
        .await?;
    if !rows.first().is_some_and(|r| r.get::<_, bool>(2)) {
        return Ok(None);
    }
    let total: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
    let head_seq: i64 = rows.first().map(|r| r.get(1)).unwrap_or(0);
    let tasks = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(3).is_some())
        .map(|r| task_from_row(r, 3))
        .collect();
    Ok(Some(TaskPage {
        tasks,
        total,
        head_seq,
    }))
}

/// Applies `change` atomically; `None` when the task does not exist or `who` may not change it.
///
/// # Errors
/// Database or pool failure.
pub async fn update(
    pool: &Pool,
    ch: &Change<'_>,
    who: Caller,
) -> Result<Option<(v1::Task, i64)>, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_opt(
            &c.stmts.update,
            &[
                &ch.id,
                &ch.title,
                &ch.description,
                &ch.completed,
                &who.user,
                &who.all_boards,
            ],
        )
        .await?;
    Ok(row.map(|r| (task_from_row(&r, 0), r.get(9))))
}

/// Deletes a task; `None` when it did not exist or `who` may not change it.
///
/// # Errors
/// Database or pool failure.
pub async fn delete(pool: &Pool, id: i64, who: Caller) -> Result<Option<(v1::Task, i64)>, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_opt(&c.stmts.delete, &[&id, &who.user, &who.all_boards])
        .await?;
    Ok(row.map(|r| (task_from_row(&r, 0), r.get(9))))
}

/// An event row of the outbox.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub board_id: i64,
    pub seq: i64,
    pub kind: String,
    pub task_id: i64,
    pub payload: Bytes,
    pub committed_at: DateTime<Utc>,
}

impl EventRow {
    /// Reads an event from `row` starting at column `at`
    /// (board_id, seq, kind, task_id, payload, created_at).
    fn from_row(row: &Row, at: usize) -> Self {
        EventRow {
            board_id: row.get(at),
            seq: row.get(at + 1),
            kind: row.get(at + 2),
            task_id: row.get(at + 3),
            payload: Bytes::from(row.get::<_, String>(at + 4)),
            committed_at: row.get(at + 5),
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
        }
    }
}

/// A board's events after `after_seq` (at most `limit`), and the board's head seq; `None` when
/// `who` may not read the board.
///
/// # Errors
/// Database or pool failure.
pub async fn list_events(
    pool: &Pool,
    board_id: i64,
    after_seq: i64,
    limit: i64,
    who: Caller,
) -> Result<Option<(Vec<EventRow>, i64)>, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(
            &c.stmts.list_events,
            &[&board_id, &after_seq, &limit, &who.user, &who.all_boards],
        )
        .await?;
    if !rows.first().is_some_and(|r| r.get::<_, bool>(7)) {
        return Ok(None);
    }
    let head: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
    let events = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(2).is_some())
        .map(|r| EventRow::from_row(r, 1))
        .collect();
    Ok(Some((events, head)))
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

/// The oldest unpublished events, boards interleaved, each board in seq order.
///
/// # Errors
/// Database or pool failure.
pub async fn unpublished(pool: &Pool, limit: i64) -> Result<Vec<EventRow>, Error> {
    let c = acquire(pool).await?;
    let rows = c.client.query(&c.stmts.unpublished, &[&limit]).await?;
    Ok(rows.iter().map(|r| EventRow::from_row(r, 0)).collect())
}

/// Marks events as published.
///
/// # Errors
/// Database or pool failure.
pub async fn mark_published(pool: &Pool, events: &[EventRow]) -> Result<u64, Error> {
    let boards: Vec<i64> = events.iter().map(|e| e.board_id).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let c = acquire(pool).await?;
    Ok(c.client
        .execute(&c.stmts.mark_published, &[&boards, &seqs])
        .await?)
}

/// Deletes published events older than `retention`.
///
/// # Errors
/// Database or pool failure.
pub async fn prune(pool: &Pool, retention: Duration) -> Result<u64, Error> {
    let c = acquire(pool).await?;
    Ok(c.client
        .execute(&c.stmts.prune, &[&retention.as_secs_f64()])
        .await?)
}

/// How many committed events are not published yet.
///
/// # Errors
/// Database or pool failure.
pub async fn pending(pool: &Pool) -> Result<i64, Error> {
    let c = acquire(pool).await?;
    Ok(c.client.query_one(&c.stmts.pending, &[]).await?.get(0))
}
