//! Boards and their members. Not on the hot path: plain (unprepared) statements, and transactions
//! where a rule spans rows (a board always keeps an owner).
use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::Row;

use super::pool::acquire;
use super::{timestamp, Pool};
use crate::access::{Caller, Role};
use crate::Error;

/// Most boards one ListBoards answer holds.
pub const MAX_LISTED: i64 = 1000;

const BOARD_COLS: &str = "b.id, b.name, b.created_by, b.created_at, b.last_seq";

/// A board, with the caller's role on it.
pub struct BoardRow {
    pub id: i64,
    pub name: String,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub head: i64,
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
            role: r.get::<_, Option<&str>>(5).and_then(Role::parse),
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
        }
    }
}

/// Creates a board; `owner` (when there is a user) becomes its owner, in the same transaction.
///
/// # Errors
/// Database or pool failure.
pub async fn create(pool: &Pool, name: &str, owner: Option<i64>) -> Result<BoardRow, Error> {
    let c = acquire(pool).await?;
    // An implicit board (made by a first task) may already hold the sequence's next id: skip it.
    loop {
        let row = c
            .client
            .query_opt(
                &format!(
                    "WITH b AS (INSERT INTO boards AS b (id, last_seq, name, created_by) \
                       VALUES (nextval('boards_id_seq'), 0, $1, $2) ON CONFLICT (id) DO NOTHING \
                       RETURNING {BOARD_COLS}), \
                     m AS (INSERT INTO board_members (board_id, user_id, role) \
                       SELECT id, $2, 'owner' FROM b WHERE $2::int8 IS NOT NULL) \
                     SELECT *, CASE WHEN $2::int8 IS NULL THEN NULL ELSE 'owner' END FROM b"
                ),
                &[&name, &owner],
            )
            .await?;
        if let Some(r) = row {
            return Ok(BoardRow::from_row(&r));
        }
    }
}

/// A board with `user`'s role on it, or `None` when it does not exist.
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
                 ON m.board_id = b.id AND m.user_id = $2 WHERE b.id = $1"
            ),
            &[&id, &user],
        )
        .await?;
    Ok(row.map(|r| BoardRow::from_row(&r)))
}

/// The boards `who` is a member of (the first [`MAX_LISTED`] of every board, for a caller who sees
/// every board), by id.
///
/// # Errors
/// Database or pool failure.
pub async fn list(pool: &Pool, who: Caller) -> Result<Vec<BoardRow>, Error> {
    let c = acquire(pool).await?;
    let rows = match who.user {
        _ if who.all_boards => {
            c.client
                .query(
                    &format!(
                        "SELECT {BOARD_COLS}, m.role FROM boards b LEFT JOIN board_members m \
                         ON m.board_id = b.id AND m.user_id = $1 ORDER BY b.id LIMIT $2"
                    ),
                    &[&who.user, &MAX_LISTED],
                )
                .await?
        }
        Some(user) => {
            c.client
                .query(
                    &format!(
                        "SELECT {BOARD_COLS}, m.role FROM board_members m \
                         JOIN boards b ON b.id = m.board_id WHERE m.user_id = $1 \
                         ORDER BY b.id LIMIT $2"
                    ),
                    &[&user, &MAX_LISTED],
                )
                .await?
        }
        None => Vec::new(),
    };
    Ok(rows.iter().map(BoardRow::from_row).collect())
}

/// A board's members, by user id.
///
/// # Errors
/// Database or pool failure.
pub async fn members(pool: &Pool, board: i64) -> Result<Vec<(i64, Role)>, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(
            "SELECT user_id, role FROM board_members WHERE board_id = $1 ORDER BY user_id",
            &[&board],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0), Role::parse(r.get(1))?)))
        .collect())
}

/// Gives `user` `role` on `board` (`None`: removes them). A change that would leave the board
/// without an owner is refused with [`Error::FailedPrecondition`]. Returns whether `user` was a
/// member before.
///
/// # Errors
/// That refusal, or a database or pool failure.
pub async fn set_member(
    pool: &Pool,
    board: i64,
    user: i64,
    role: Option<Role>,
) -> Result<bool, Error> {
    let mut c = acquire(pool).await?;
    let tx = c.client.transaction().await?;
    // The board row serialises member changes of one board (two owners demoting each other at
    // once cannot both succeed).
    tx.execute("SELECT 1 FROM boards WHERE id = $1 FOR UPDATE", &[&board])
        .await?;
    let before: Option<Role> = tx
        .query_opt(
            "SELECT role FROM board_members WHERE board_id = $1 AND user_id = $2",
            &[&board, &user],
        )
        .await?
        .and_then(|r| Role::parse(r.get(0)));
    if before == Some(Role::Owner) && role != Some(Role::Owner) {
        let owners: i64 = tx
            .query_one(
                "SELECT count(*) FROM board_members WHERE board_id = $1 AND role = 'owner'",
                &[&board],
            )
            .await?
            .get(0);
        if owners <= 1 {
            return Err(Error::FailedPrecondition(format!(
                "user {user} is the only owner of board {board}: make someone else owner first"
            )));
        }
    }
    match role {
        Some(r) => {
            tx.execute(
                "INSERT INTO board_members (board_id, user_id, role) VALUES ($1, $2, $3) \
                 ON CONFLICT (board_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                &[&board, &user, &r.as_str()],
            )
            .await?;
        }
        None => {
            tx.execute(
                "DELETE FROM board_members WHERE board_id = $1 AND user_id = $2",
                &[&board, &user],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(before.is_some())
}
