//! Why a call is refused, asked only once a query matched nothing: not found, not a member, too
//! low a role, another version. The answers say which, without revealing other boards' task ids.
use taskboard_proto::v1;
use tonic::Status;

use super::Service;
use crate::access::{Caller, Role};
use crate::db::{self, boards::BoardRow};
use crate::Error;

impl Service {
    /// The board, when `who` holds at least `least` on it (or sees every board).
    pub(super) async fn require(
        &self,
        board: i64,
        who: Caller,
        least: Role,
    ) -> Result<BoardRow, Error> {
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
    pub(super) async fn readable_head(&self, board: i64, who: Caller) -> Result<i64, Status> {
        match db::heads(&self.pool, &[board], who).await?.first() {
            Some(h) if h.readable => Ok(h.head),
            _ => Err(not_a_member(board)),
        }
    }

    /// Why `who` could not create a task on `board`.
    pub(super) async fn write_refusal(&self, board: i64, who: Caller) -> Result<Error, Error> {
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
    pub(super) async fn task_refusal(
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

/// FAILED_PRECONDITION: `task` is not at the version the caller expected.
pub(super) fn version_mismatch(task: &v1::Task, expected: Option<i64>) -> Status {
    Status::from(Error::VersionMismatch {
        id: task.id,
        current: task.version,
        expected: expected.unwrap_or_default(),
    })
}

pub(super) fn not_found(id: i64) -> Status {
    Status::from(Error::NotFound(format!("Task {id} not found")))
}

/// PERMISSION_DENIED for a board the caller may not read.
pub(super) fn not_a_member(board: i64) -> Status {
    Status::from(Error::PermissionDenied(format!(
        "you are not a member of board {board}"
    )))
}
