//! Boards and their members. Not on the hot path: plain (unprepared) statements, and transactions
//! where a rule spans rows (a board always keeps an owner).
use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::Row;

use super::pool::acquire;
use super::{timestamp, EventRow, Pool};
use crate::access::{Caller, Role};
use crate::Error;

/// Most boards one ListBoards answer holds.
pub const MAX_LISTED: i64 = 1000;

const BOARD_COLS: &str =
    "b.id, b.name, b.created_by, b.created_at, b.last_seq, b.description, b.archived_at";

/// A board, with the caller's role on it.
pub struct BoardRow {
    pub id: i64,
    pub name: String,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub head: i64,
    pub description: String,
    pub archived_at: Option<DateTime<Utc>>,
    pub role: Option<Role>,
}

impl BoardRow {
    /// Reads `BOARD_COLS` and then the role (text or NULL).
    fn from_row(r: &Row) -> Self {
        BoardRow {
            id: r.get(0),
            name: r.get(1),
            created_by: r.get(2),
            created_at: r.get(3),
            head: r.get(4),
            description: r.get(5),
            archived_at: r.get(6),
            role: r.get::<_, Option<&str>>(7).and_then(Role::parse),
        }
    }

    pub fn to_proto(&self) -> v1::Board {
        v1::Board {
            id: self.id,
            name: self.name.clone(),
            created_by: self.created_by.unwrap_or(0),
            created_at: Some(timestamp(self.created_at)),
            head_seq: self.head,
            role: self.role.map(Role::as_str).unwrap_or_default().into(),
            description: self.description.clone(),
            archived_at: self.archived_at.map(timestamp),
        }
    }
}

/// Creates a board; `owner` (when there is a user) becomes its owner, in the same transaction.
///
/// # Errors
/// Database or pool failure.
pub async fn create(
    pool: &Pool,
    name: &str,
    description: &str,
    owner: Option<i64>,
) -> Result<BoardRow, Error> {
    let c = acquire(pool).await?;
    // An implicit board (made by a first task) may already hold the sequence's next id: skip it.
    loop {
        let row = c
            .client
            .query_opt(
                &format!(
                    "WITH b AS (INSERT INTO boards AS b (id, last_seq, name, created_by, description) \
                       VALUES (nextval('boards_id_seq'), 0, $1, $2, $3) ON CONFLICT (id) DO NOTHING \
                       RETURNING {BOARD_COLS}), \
                     m AS (INSERT INTO board_members (board_id, user_id, role) \
                       SELECT id, $2, 'owner' FROM b WHERE $2::int8 IS NOT NULL) \
                     SELECT *, CASE WHEN $2::int8 IS NULL THEN NULL ELSE 'owner' END FROM b"
                ),
                &[&name, &owner, &description],
            )
            .await?;
        if let Some(r) = row {
            return Ok(BoardRow::from_row(&r));
        }
    }
}

/// A board with `user`'s role on it, or `None` when it does not exist (or was deleted).
///
/// # Errors
/// Database or pool failure.
pub async fn get(pool: &Pool, id: i64, user: Option<i64>) -> Result<Option<BoardRow>, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_opt(
            &format!(
                "SELECT {BOARD_COLS}, m.role FROM boards b LEFT JOIN board_members m \
                 ON m.board_id = b.id AND m.user_id = $2 WHERE b.id = $1 AND b.deleted_at IS NULL"
            ),
            &[&id, &user],
        )
        .await?;
    Ok(row.map(|r| BoardRow::from_row(&r)))
}

/// The boards `who` is a member of (the first [`MAX_LISTED`] of every board, for a caller who sees
/// every board), by id; archived ones only with `archived`, deleted ones never.
///
/// # Errors
/// Database or pool failure.
pub async fn list(pool: &Pool, who: Caller, archived: bool) -> Result<Vec<BoardRow>, Error> {
    let c = acquire(pool).await?;
    let rows = match who.user {
        _ if who.all_boards => {
            c.client
                .query(
                    &format!(
                        "SELECT {BOARD_COLS}, m.role FROM boards b LEFT JOIN board_members m \
                         ON m.board_id = b.id AND m.user_id = $1 \
                         WHERE b.deleted_at IS NULL AND ($3 OR b.archived_at IS NULL) \
                         ORDER BY b.id LIMIT $2"
                    ),
                    &[&who.user, &MAX_LISTED, &archived],
                )
                .await?
        }
        Some(user) => {
            c.client
                .query(
                    &format!(
                        "SELECT {BOARD_COLS}, m.role FROM board_members m \
                         JOIN boards b ON b.id = m.board_id WHERE m.user_id = $1 \
                         AND b.deleted_at IS NULL AND ($3 OR b.archived_at IS NULL) \
                         ORDER BY b.id LIMIT $2"
                    ),
                    &[&user, &MAX_LISTED, &archived],
                )
                .await?
        }
        None => Vec::new(),
    };
    Ok(rows.iter().map(BoardRow::from_row).collect())
}

/// A change of a board's own fields (`None` leaves one as it is).
pub struct BoardChange<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub archived: Option<bool>,
}

/// The browser JSON of a `board_updated` event for the updated row `u` at seq `u.last_seq`.
const BOARD_UPDATED_PAYLOAD: &str = "json_build_object('type', 'board_updated', 'board_id', u.id, \
     'seq', u.last_seq, 'timestamp', floor(extract(epoch FROM now()))::bigint, \
     'board', json_build_object('id', u.id, 'name', u.name, 'description', u.description, \
       'archived', u.archived_at IS NOT NULL))::text";

/// Applies `change` to `board` with its `board_updated` event, in one transaction; returns the
/// board (with `who`'s role) and the event. An archived board takes no change but unarchiving.
///
/// # Errors
/// [`Error::NotFound`] (no such board, or deleted), [`Error::FailedPrecondition`] (archived), or
/// a database or pool failure.
pub async fn update(
    pool: &Pool,
    board: i64,
    change: &BoardChange<'_>,
    who: Caller,
) -> Result<(BoardRow, EventRow), Error> {
    let mut c = acquire(pool).await?;
    let tx = c.client.transaction().await?;
    let archived: Option<DateTime<Utc>> = tx
        .query_opt(
            "SELECT archived_at FROM boards WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
            &[&board],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("Board {board} not found")))?
        .get(0);
    if archived.is_some() && change.archived != Some(false) {
        return Err(Error::FailedPrecondition(format!(
            "board {board} is archived (read-only): unarchive it first"
        )));
    }
    let row = tx
        .query_one(
            &format!(
                "WITH u AS (UPDATE boards SET name = COALESCE($2, name), \
                   description = COALESCE($3, description), \
                   archived_at = CASE WHEN $4::bool IS NULL THEN archived_at \
                                      WHEN $4 THEN COALESCE(archived_at, now()) END, \
                   last_seq = last_seq + 1 WHERE id = $1 RETURNING *), \
                 e AS (INSERT INTO events (board_id, seq, kind, task_id, payload, actor) \
                   SELECT u.id, u.last_seq, 'board_updated', 0, {BOARD_UPDATED_PAYLOAD}, $5 \
                   FROM u RETURNING seq, payload, created_at) \
                 SELECT {cols}, \
                   (SELECT role FROM board_members WHERE board_id = $1 AND user_id = $5), \
                   e.payload, e.created_at FROM u AS b, e",
                cols = BOARD_COLS
            ),
            &[
                &board,
                &change.name,
                &change.description,
                &change.archived,
                &who.user,
            ],
        )
        .await?;
    tx.commit().await?;
    let b = BoardRow::from_row(&row);
    let event = EventRow {
        board_id: board,
        seq: b.head,
        kind: KIND_BOARD_UPDATED.into(),
        task_id: 0,
        payload: bytes::Bytes::from(row.get::<_, String>(8)),
        committed_at: row.get(9),
        actor: who.user,
        trace: None,
    };
    Ok((b, event))
}

/// Event kinds of the board itself.
const KIND_BOARD_UPDATED: &str = "board_updated";
const KIND_BOARD_DELETED: &str = "board_deleted";

/// Deletes `board` with its tasks, events, members and idempotency keys in one transaction,
/// leaving a tombstone row (the id is never reused) and the final `board_deleted` event, which
/// becomes the board's only event (the outbox cursor moves to just before it).
///
/// # Errors
/// [`Error::NotFound`] (no such board, or already deleted), or a database or pool failure.
pub async fn delete(pool: &Pool, board: i64, who: Caller) -> Result<EventRow, Error> {
    let mut c = acquire(pool).await?;
    let tx = c.client.transaction().await?;
    tx.query_opt(
        "SELECT 1 FROM boards WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
        &[&board],
    )
    .await?
    .ok_or_else(|| Error::NotFound(format!("Board {board} not found")))?;
    for table in [
        "tasks",
        "events",
        "board_members",
        "outbox_runs",
        "idempotency_keys",
    ] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE board_id = $1"),
            &[&board],
        )
        .await?;
    }
    let row = tx
        .query_one(
            "WITH u AS (UPDATE boards SET deleted_at = now(), archived_at = NULL, name = '', \
               description = '', last_seq = last_seq + 1 WHERE id = $1 RETURNING id, last_seq), \
             c AS (INSERT INTO outbox_cursor AS c (board_id, published_seq) \
               SELECT id, last_seq - 1 FROM u ON CONFLICT (board_id) DO UPDATE \
               SET published_seq = EXCLUDED.published_seq), \
             e AS (INSERT INTO events (board_id, seq, kind, task_id, payload, actor) \
               SELECT u.id, u.last_seq, 'board_deleted', 0, \
                 json_build_object('type', 'board_deleted', 'board_id', u.id, 'seq', u.last_seq, \
                   'timestamp', floor(extract(epoch FROM now()))::bigint)::text, $2 \
               FROM u RETURNING seq, payload, created_at) \
             SELECT e.seq, e.payload, e.created_at FROM e",
            &[&board, &who.user],
        )
        .await?;
    tx.commit().await?;
    Ok(EventRow {
        board_id: board,
        seq: row.get(0),
        kind: KIND_BOARD_DELETED.into(),
        task_id: 0,
        payload: bytes::Bytes::from(row.get::<_, String>(1)),
        committed_at: row.get(2),
        actor: who.user,
        trace: None,
    })
}

/// Whether `board` has members (a board made by a first task, without CreateBoard, has none).
///
/// # Errors
/// Database or pool failure.
pub async fn has_members(pool: &Pool, board: i64) -> Result<bool, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM board_members WHERE board_id = $1)",
            &[&board],
        )
        .await?;
    Ok(row.get(0))
}
