//! Board members and their roles; each change is a `member_changed` event on the board's own seq,
//! so every gateway learns in order that a user lost (or changed) access.
use super::pool::acquire;
use super::{EventRow, Pool};
use crate::access::Role;
use crate::Error;

/// The event kind of a member added, re-roled or removed.
pub const KIND_MEMBER_CHANGED: &str = "member_changed";

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

/// What [`set_member`] did.
pub struct MemberChange {
    /// The user's role before (`None`: not a member).
    pub before: Option<Role>,
    /// The `member_changed` event, when anything changed (setting the role a member already has
    /// is no event).
    pub event: Option<EventRow>,
}

/// Gives `user` `role` on `board` (`None`: removes them), with its `member_changed` event in the
/// same transaction. A change that would leave the board without an owner is refused with
/// [`Error::FailedPrecondition`].
///
/// # Errors
/// That refusal, or a database or pool failure.
pub async fn set_member(
    pool: &Pool,
    board: i64,
    user: i64,
    role: Option<Role>,
    actor: Option<i64>,
) -> Result<MemberChange, Error> {
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
    if before == role {
        tx.commit().await?;
        return Ok(MemberChange {
            before,
            event: None,
        });
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
    let role_text = role.map(Role::as_str);
    let before_text = before.map(Role::as_str);
    let row = tx
        .query_one(
            "WITH u AS (UPDATE boards SET last_seq = last_seq + 1 WHERE id = $1 \
               RETURNING id, last_seq), \
             e AS (INSERT INTO events (board_id, seq, kind, task_id, payload, actor) \
               SELECT u.id, u.last_seq, 'member_changed', 0, \
                 json_build_object('type', 'member_changed', 'board_id', u.id, \
                   'seq', u.last_seq, 'user_id', $2::bigint, 'role', $3::text, \
                   'previous_role', $4::text, \
                   'timestamp', floor(extract(epoch FROM now()))::bigint)::text, $5 \
               FROM u RETURNING seq, payload, created_at) \
             SELECT e.seq, e.payload, e.created_at FROM e",
            &[&board, &user, &role_text, &before_text, &actor],
        )
        .await?;
    tx.commit().await?;
    Ok(MemberChange {
        before,
        event: Some(EventRow {
            board_id: board,
            seq: row.get(0),
            kind: KIND_MEMBER_CHANGED.into(),
            task_id: 0,
            payload: bytes::Bytes::from(row.get::<_, String>(1)),
            committed_at: row.get(2),
            actor,
            trace: None,
        }),
    })
}
