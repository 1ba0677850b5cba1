//! Tasks as the service reads them (one, a board's page with filters and order, a member's role,
//! a task's board) and the validated inputs of a change (`NewTask`, `Change`).
use chrono::{DateTime, Utc};
use taskboard_proto::v1;

use super::pool::acquire;
use super::{task_from_row, Pool};
use crate::access::{Caller, Role};
use crate::Error;

/// A validated new task.
pub struct NewTask<'a> {
    pub board_id: i64,
    pub title: &'a str,
    pub description: &'a str,
    pub created_by: i64,
    pub assignee: Option<i64>,
    pub due_at: Option<DateTime<Utc>>,
    /// `None`: on top of the manual order.
    pub position: Option<f64>,
}

/// A validated change; `None` leaves a field as it is.
pub struct Change<'a> {
    pub id: i64,
    pub title: Option<&'a str>,
    pub description: Option<&'a str>,
    pub completed: Option<bool>,
    /// `Some(0)` unassigns.
    pub assignee: Option<i64>,
    pub due_at: Due,
    pub position: Option<f64>,
}

/// What an update does to the due date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Due {
    #[default]
    Keep,
    Set(DateTime<Utc>),
    Clear,
}

impl Change<'_> {
    /// Whether it changes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.description.is_none()
            && self.completed.is_none()
            && self.assignee.is_none()
            && self.due_at == Due::Keep
            && self.position.is_none()
    }
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

/// The order of a [`list`] page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Newest first.
    #[default]
    Created,
    /// The manual order.
    Position,
    /// Soonest due first; tasks without a due date last.
    Due,
}

/// What a [`list`] page holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskFilter {
    pub completed: Option<bool>,
    /// `Some(0)`: unassigned tasks only.
    pub assignee: Option<i64>,
    pub due_before: Option<DateTime<Utc>>,
    pub sort: Sort,
}

/// Reads a [`TaskPage`]; `None` when `who` may not read the board.
///
/// # Errors
/// Database or pool failure.
pub async fn list(
    pool: &Pool,
    board_id: i64,
    filter: TaskFilter,
    limit: i64,
    offset: i64,
    who: Caller,
) -> Result<Option<TaskPage>, Error> {
    let c = acquire(pool).await?;
    let statement = match filter.sort {
        Sort::Created => &c.stmts.list,
        Sort::Position => &c.stmts.list_by_position,
        Sort::Due => &c.stmts.list_by_due,
    };
    let rows = c
        .client
        .query(
            statement,
            &[
                &board_id,
                &filter.completed,
                &limit,
                &offset,
                &who.user,
                &who.all_boards,
                &filter.assignee,
                &filter.due_before,
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
