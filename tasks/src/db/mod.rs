//! PostgreSQL access: the queries and their row mapping. The pool lives in `pool`, the SQL text in
//! `statements`, the migrations in `migrate`.
pub mod boards;
mod migrate;
mod pool;
mod search;
mod statements;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::{GenericClient, Row};

pub use migrate::migrate;
pub use pool::{connect, pool, Manager, PgConn, Pool};
pub use search::{search, SearchPage};
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
        assignee: row.get::<_, Option<i64>>(at + 9).unwrap_or(0),
        due_at: row.get::<_, Option<DateTime<Utc>>>(at + 10).map(timestamp),
        position: row.get(at + 11),
    }
}

/// Columns `task_from_row` reads.
const TASK_COLUMNS: usize = 12;

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

/// Event kinds of the mutations (as the SQL writes them).
const KIND_CREATED: &str = "created";
const KIND_UPDATED: &str = "updated";
const KIND_DELETED: &str = "deleted";

/// A validated change to a task, owned so it can wait in the group committer's queue.
#[derive(Debug, Clone)]
pub enum Mutation {
    Create {
        board_id: i64,
        title: String,
        description: String,
        created_by: i64,
        assignee: Option<i64>,
        due_at: Option<DateTime<Utc>>,
        position: Option<f64>,
        /// Records the answer under this key (`<caller>:<client key>`).
        idempotency_key: Option<String>,
    },
    Update {
        id: i64,
        title: Option<String>,
        description: Option<String>,
        completed: Option<bool>,
        assignee: Option<i64>,
        due_at: Due,
        position: Option<f64>,
        /// Only while the task is at this version.
        expected_version: Option<i64>,
    },
    Delete {
        id: i64,
        /// Only while the task is at this version.
        expected_version: Option<i64>,
    },
}

impl Mutation {
    /// The create `t`, recording its answer under `idempotency_key` when given.
    pub fn create(t: &NewTask<'_>, idempotency_key: Option<String>) -> Self {
        Mutation::Create {
            board_id: t.board_id,
            title: t.title.to_owned(),
            description: t.description.to_owned(),
            created_by: t.created_by,
            assignee: t.assignee,
            due_at: t.due_at,
            position: t.position,
            idempotency_key,
        }
    }
}

impl Mutation {
    /// The update `c`, applied only while the task is at `expected_version` (when given).
    pub fn update(c: &Change<'_>, expected_version: Option<i64>) -> Self {
        Mutation::Update {
            id: c.id,
            title: c.title.map(str::to_owned),
            description: c.description.map(str::to_owned),
            completed: c.completed,
            assignee: c.assignee,
            due_at: c.due_at,
            position: c.position,
            expected_version,
        }
    }
}

/// A committed mutation: the task (after the change, or as it was when deleted) and its event.
#[derive(Debug, Clone)]
pub struct Applied {
    pub task: v1::Task,
    pub event: EventRow,
}

impl Mutation {
    /// Runs the mutation's one statement on `client` (a connection, or a transaction shared with
    /// other mutations); `None` when the task does not exist or `who` may not change it.
    ///
    /// # Errors
    /// The statement fails.
    pub async fn run(
        &self,
        client: &impl GenericClient,
        s: &Statements,
        who: Caller,
    ) -> Result<Option<Applied>, tokio_postgres::Error> {
        let (row, kind) = match self {
            Mutation::Create {
                board_id,
                title,
                description,
                created_by,
                assignee,
                due_at,
                position,
                idempotency_key,
            } => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
                    board_id,
                    title,
                    description,
                    created_by,
                    &who.user,
                    &who.all_boards,
                    assignee,
                    due_at,
                    position,
                    idempotency_key,
                ];
                let row = match idempotency_key {
                    Some(_) => client.query_opt(&s.create_keyed, &params).await?,
                    None => client.query_opt(&s.create, &params[..9]).await?,
                };
                (row, KIND_CREATED)
            }
            Mutation::Update {
                id,
                title,
                description,
                completed,
                assignee,
                due_at,
                position,
                expected_version,
            } => {
                let (due, clear) = match due_at {
                    Due::Keep => (None, false),
                    Due::Set(t) => (Some(*t), false),
                    Due::Clear => (None, true),
                };
                (
                    client
                        .query_opt(
                            &s.update,
                            &[
                                id,
                                title,
                                description,
                                completed,
                                &who.user,
                                &who.all_boards,
                                expected_version,
                                assignee,
                                &due,
                                &clear,
                                position,
                            ],
                        )
                        .await?,
                    KIND_UPDATED,
                )
            }
            Mutation::Delete {
                id,
                expected_version,
            } => (
                client
                    .query_opt(
                        &s.delete,
                        &[id, &who.user, &who.all_boards, expected_version],
                    )
                    .await?,
                KIND_DELETED,
            ),
        };
        Ok(row.map(|r| applied_from_row(&r, 0, kind, who)))
    }

    /// The new task of a create without an idempotency key (which [`create_many`] takes).
    fn as_plain_create(&self) -> Option<NewTask<'_>> {
        match self {
            Mutation::Create {
                board_id,
                title,
                description,
                created_by,
                assignee,
                due_at,
                position,
                idempotency_key: None,
            } => Some(NewTask {
                board_id: *board_id,
                title,
                description,
                created_by: *created_by,
                assignee: *assignee,
                due_at: *due_at,
                position: *position,
            }),
            _ => None,
        }
    }
}

/// Reads a mutation's answer from `row` from column `at`: the task's columns, then the event's
/// seq, payload and commit time.
fn applied_from_row(r: &Row, at: usize, kind: &str, who: Caller) -> Applied {
    let task = task_from_row(r, at);
    let event = EventRow {
        board_id: task.board_id,
        seq: r.get(at + TASK_COLUMNS),
        kind: kind.to_owned(),
        task_id: task.id,
        payload: Bytes::from(r.get::<_, String>(at + TASK_COLUMNS + 1)),
        committed_at: r.get(at + TASK_COLUMNS + 2),
        actor: who.user,
        trace: None,
    };
    Applied { task, event }
}

/// Runs `creates` as one statement; the answer of each, in order (`None`: its caller may not
/// create on that board).
async fn create_many(
    client: &impl GenericClient,
    s: &Statements,
    creates: &[(NewTask<'_>, Caller)],
) -> Result<Vec<Option<Applied>>, tokio_postgres::Error> {
    let n = creates.len();
    let mut boards = Vec::with_capacity(n);
    let mut titles = Vec::with_capacity(n);
    let mut descriptions = Vec::with_capacity(n);
    let mut created_by = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut all_boards = Vec::with_capacity(n);
    let mut assignees = Vec::with_capacity(n);
    let mut dues = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    for (t, who) in creates {
        boards.push(t.board_id);
        titles.push(t.title);
        descriptions.push(t.description);
        created_by.push(t.created_by);
        users.push(who.user);
        all_boards.push(who.all_boards);
        assignees.push(t.assignee);
        dues.push(t.due_at);
        positions.push(t.position);
    }
    let rows = client
        .query(
            &s.create_many,
            &[
                &boards,
                &titles,
                &descriptions,
                &created_by,
                &users,
                &all_boards,
                &assignees,
                &dues,
                &positions,
            ],
        )
        .await?;
    let mut out: Vec<Option<Applied>> = (0..n).map(|_| None).collect();
    for r in rows {
        // `ord` counts from 1.
        let i = usize::try_from(r.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
        if let (Some(slot), Some((_, who))) = (out.get_mut(i), creates.get(i)) {
            *slot = Some(applied_from_row(&r, 1, KIND_CREATED, *who));
        }
    }
    Ok(out)
}

/// Runs one mutation in its own transaction (the statement's own).
///
/// # Errors
/// Database or pool failure.
pub async fn apply(pool: &Pool, m: &Mutation, who: Caller) -> Result<Option<Applied>, Error> {
    let c = acquire(pool).await?;
    Ok(m.run(&c.client, &c.stmts, who).await?)
}

/// Runs `batch` in one transaction: the statements pipelined, one commit (one WAL flush) for
/// all. Each mutation gets its own answer (`None`: not found or not allowed, which fails nothing
/// else).
///
/// # Errors
/// [`BatchError::RolledBack`] when any statement failed (nothing was committed: run them one by
/// one to learn which), [`BatchError::Unknown`] when the connection failed at commit (the outcome
/// is not known, so they must not be retried).
pub async fn apply_batch(
    pool: &Pool,
    batch: &[(&Mutation, Caller)],
) -> Result<Vec<Option<Applied>>, BatchError> {
    let mut c = acquire(pool).await.map_err(BatchError::Before)?;
    let PgConn { client, stmts } = &mut *c;
    let txn = client
        .transaction()
        .await
        .map_err(|e| BatchError::Before(e.into()))?;
    // Two or more plain creates go as one statement, the rest one statement each, all pipelined.
    let mut creates = Vec::new();
    let mut many = Vec::new();
    let mut others = Vec::new();
    for (i, (m, who)) in batch.iter().enumerate() {
        match m.as_plain_create() {
            Some(t) => {
                creates.push(i);
                many.push((t, *who));
            }
            None => others.push(i),
        }
    }
    if many.len() < 2 {
        creates.clear();
        many.clear();
        others = (0..batch.len()).collect();
    }
    let (created, results) = futures_util::future::join(
        async {
            if many.is_empty() {
                Ok(Vec::new())
            } else {
                create_many(&txn, stmts, &many).await
            }
        },
        futures_util::future::join_all(
            others
                .iter()
                .map(|&i| batch[i].0.run(&txn, stmts, batch[i].1)),
        ),
    )
    .await;
    // Dropping `txn` on an error rolls the transaction back.
    let mut out: Vec<Option<Applied>> = (0..batch.len()).map(|_| None).collect();
    for (&i, a) in creates.iter().zip(created.map_err(BatchError::RolledBack)?) {
        out[i] = a;
    }
    for (i, r) in others.into_iter().zip(results) {
        out[i] = r.map_err(BatchError::RolledBack)?;
    }
    match txn.commit().await {
        Ok(()) => {
            let made = creates.iter().filter(|&&i| out[i].is_some()).count();
            metrics::counter!("taskboard_write_multi_row_creates_total").increment(made as u64);
            Ok(out)
        }
        Err(e) if e.as_db_error().is_some() => Err(BatchError::RolledBack(e)),
        Err(e) => Err(BatchError::Unknown(e)),
    }
}

/// Why [`apply_batch`] committed nothing (or may not have).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// No connection, or the transaction could not begin: nothing ran.
    #[error("{0}")]
    Before(Error),
    /// A statement (or the commit) failed and the transaction was rolled back.
    #[error("batch rolled back: {0}")]
    RolledBack(tokio_postgres::Error),
    /// The connection failed while committing: the batch may or may not be committed.
    #[error("connection lost while committing: {0}")]
    Unknown(tokio_postgres::Error),
}

/// The answer recorded under an idempotency key: the task as the first call answered it, its
/// seq, and whether it is within 24 h (an older one is forgotten, and `None` returned).
///
/// # Errors
/// Database or pool failure.
pub async fn idempotent(pool: &Pool, key: &str) -> Result<Option<(v1::Task, i64)>, Error> {
    let c = acquire(pool).await?;
    let Some(row) = c.client.query_opt(&c.stmts.idempotent, &[&key]).await? else {
        return Ok(None);
    };
    if !row.get::<_, bool>(TASK_COLUMNS + 1) {
        c.client.execute(&c.stmts.expire_key, &[&key]).await?;
        return Ok(None);
    }
    Ok(Some((task_from_row(&row, 0), row.get(TASK_COLUMNS))))
}

/// Forgets idempotency keys past 24 h.
///
/// # Errors
/// Database or pool failure.
pub async fn prune_keys(pool: &Pool) -> Result<u64, Error> {
    let c = acquire(pool).await?;
    Ok(c.client.execute(&c.stmts.prune_keys, &[]).await?)
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
    fn from_row(row: &Row, at: usize) -> Self {
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

/// Events behind the outbox cursor of boards whose first unpublished event committed more than
/// `grace` ago; boards interleaved, each board in seq order.
///
/// # Errors
/// Database or pool failure.
pub async fn behind(pool: &Pool, limit: i64, grace: Duration) -> Result<Vec<EventRow>, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(&c.stmts.behind, &[&limit, &grace.as_secs_f64()])
        .await?;
    Ok(rows.iter().map(|r| EventRow::from_row(r, 0)).collect())
}

/// Records `events` as published (and confirmed): each board's cursor moves as far as its
/// published runs reach without a gap; a run after a gap (another replica has not confirmed the
/// seqs before it yet) is kept until the gap is published.
///
/// # Errors
/// Database or pool failure.
pub async fn advance(pool: &Pool, events: &[EventRow]) -> Result<u64, Error> {
    let (boards, firsts, lasts) = runs(events);
    if boards.is_empty() {
        return Ok(0);
    }
    // The usual case in one set-based statement: each board's first run continues its cursor
    // and the board has no kept runs. Everything else goes through `taskboard_advance`.
    let mut first_of_board = vec![false; boards.len()];
    for i in 0..boards.len() {
        first_of_board[i] = i == 0 || boards[i - 1] != boards[i];
    }
    let pick = |v: &[i64], first: bool| -> Vec<i64> {
        v.iter()
            .zip(&first_of_board)
            .filter(|(_, f)| **f == first)
            .map(|(x, _)| *x)
            .collect()
    };
    let c = acquire(pool).await?;
    let done: std::collections::HashSet<i64> = c
        .client
        .query(
            &c.stmts.advance_fast,
            &[
                &pick(&boards, true),
                &pick(&firsts, true),
                &pick(&lasts, true),
            ],
        )
        .await?
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let rest: Vec<usize> = (0..boards.len())
        .filter(|&i| !first_of_board[i] || !done.contains(&boards[i]))
        .collect();
    if !rest.is_empty() {
        let take = |v: &[i64]| rest.iter().map(|&i| v[i]).collect::<Vec<i64>>();
        c.client
            .execute(
                &c.stmts.advance,
                &[&take(&boards), &take(&firsts), &take(&lasts)],
            )
            .await?;
    }
    Ok(boards.len() as u64)
}

/// The unbroken runs of seqs in `events`, per board in seq order: (boards, firsts, lasts).
fn runs(events: &[EventRow]) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let mut seqs: Vec<(i64, i64)> = events.iter().map(|e| (e.board_id, e.seq)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (mut boards, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::<i64>::new());
    for (board, seq) in seqs {
        if boards.last() == Some(&board) && lasts.last() == Some(&(seq - 1)) {
            *lasts.last_mut().expect("as many lasts as boards") = seq;
            continue;
        }
        boards.push(board);
        firsts.push(seq);
        lasts.push(seq);
    }
    (boards, firsts, lasts)
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
