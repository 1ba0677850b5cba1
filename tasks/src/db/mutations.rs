//! Task changes: each one prepared statement ([`Mutation::run`]), a lone change (`apply`), a
//! writer's batch in one transaction (`apply_batch`, plain creates as one multi-row statement), and
//! the idempotency keys' answers.
use bytes::Bytes;
use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::{GenericClient, Row};

use super::events::EventRow;
use super::pool::acquire;
use super::pool::PgConn;
use super::statements::Statements;
use super::tasks::{Change, Due, NewTask};
use super::{task_from_row, Pool, TASK_COLUMNS};
use crate::access::Caller;
use crate::Error;

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
