//! PostgreSQL access: the queries and their row mapping. The pool lives in `pool`, the SQL text in
//! `statements`, the migrations in `migrate`.
pub mod boards;
mod events;
pub mod members;
mod migrate;
mod mutations;
mod pool;
mod relay;
mod search;
mod sql;
mod statements;
pub mod subjects;
mod tasks;

use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::Row;

pub use events::{event_task_board, heads, list_events, BoardHead, EventRow, EventsOf};
pub use migrate::migrate;
pub use mutations::{apply, apply_batch, idempotent, prune_keys, Applied, BatchError, Mutation};
pub use pool::{connect, pool, Manager, PgConn, Pool};
pub use relay::{advance, behind, pending, prune};
pub use search::{search, SearchPage};
pub use statements::Statements;
pub use tasks::{get, list, role, task_board, Change, Due, NewTask, Sort, TaskFilter, TaskPage};

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
        assignee: row.get::<_, Option<i64>>(at + 9).unwrap_or(0),
        due_at: row.get::<_, Option<DateTime<Utc>>>(at + 10).map(timestamp),
        position: row.get(at + 11),
    }
}

/// Columns `task_from_row` reads.
const TASK_COLUMNS: usize = 12;
