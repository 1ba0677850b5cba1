//! PostgreSQL access: the bb8 pool whose connections prepare every statement once, the
//! migrations, and the queries (each mutation is one statement, hence one transaction).
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use taskboard_proto::v1;
use tokio_postgres::{types::Type, Client, NoTls, Row, Statement};

use crate::Error;

/// Migrations, applied in order; `version` is recorded in `schema_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/0001_init.sql"))];

/// Advisory-lock key serialising migrations across replicas ("taskmig" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6173_6b6d_6967;

/// Columns of a task, in the order `task_from_row` reads them.
const TASK_COLS: &str =
    "id, board_id, title, description, completed, created_by, created_at, updated_at, version";

/// `TASK_COLS` qualified with the alias `t`.
fn task_cols_of_t() -> String {
    TASK_COLS
        .split(", ")
        .map(|c| format!("t.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A mutation's statement: lock/bump the board's seq, change the task, append the event.
/// `{change}` is a data-modifying CTE named `t` returning the task row (after the change, or the
/// deleted row).
fn mutation_sql(change: &str, kind: &str) -> String {
    format!(
        "WITH t AS ({change}), \
         b AS (INSERT INTO boards AS b (id, last_seq) SELECT board_id, 1 FROM t \
               ON CONFLICT (id) DO UPDATE SET last_seq = b.last_seq + 1 RETURNING last_seq), \
         e AS (INSERT INTO events (board_id, seq, kind, task_id, payload) \
               SELECT t.board_id, b.last_seq, '{kind}', t.id, \
                      taskboard_event_payload('{kind}', b.last_seq, t::tasks) FROM t, b \
               RETURNING seq) \
         SELECT {cols}, e.seq FROM t, e",
        cols = task_cols_of_t()
    )
}

/// Every statement the service runs, prepared once when a pooled connection is opened.
pub struct Statements {
    pub create: Statement,
    pub get: Statement,
    pub list: Statement,
    pub update: Statement,
    pub delete: Statement,
    pub list_events: Statement,
    pub unpublished: Statement,
    pub mark_published: Statement,
    pub prune: Statement,
    pub pending: Statement,
    pub heads: Statement,
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
        let create = mutation_sql(
            &format!(
                "INSERT INTO tasks (board_id, title, description, created_by) \
                 VALUES ($1, $2, $3, $4) RETURNING {TASK_COLS}"
            ),
            "created",
        );
        let update = mutation_sql(
            &format!(
                "UPDATE tasks SET title = COALESCE($2, title), \
                 description = COALESCE($3, description), completed = COALESCE($4, completed), \
                 updated_at = now(), version = version + 1 WHERE id = $1 RETURNING {TASK_COLS}"
            ),
            "updated",
        );
        let delete = mutation_sql(
            &format!("DELETE FROM tasks WHERE id = $1 RETURNING {TASK_COLS}"),
            "deleted",
        );
        // Count, head seq and page in one statement, hence one snapshot; always returns at least
        // one row.
        let list = format!(
            "SELECT c.total, c.head, {cols} FROM \
               (SELECT count(*) AS total, \
                       COALESCE((SELECT last_seq FROM boards WHERE id = $1), 0) AS head \
                FROM tasks WHERE board_id = $1 AND ($2::bool IS NULL OR completed = $2)) c \
             LEFT JOIN LATERAL \
               (SELECT {TASK_COLS} FROM tasks WHERE board_id = $1 AND ($2::bool IS NULL OR completed = $2) \
                ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4) t ON true",
            cols = task_cols_of_t()
        );
        let list_events = "SELECT COALESCE((SELECT last_seq FROM boards WHERE id = $1), 0), \
                  e.board_id, e.seq, e.kind, e.task_id, e.payload, e.created_at \
             FROM (SELECT 1) one LEFT JOIN LATERAL \
               (SELECT board_id, seq, kind, task_id, payload, created_at FROM events \
                WHERE board_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) e ON true";
        Ok(Statements {
            create: c
                .prepare_typed(&create, &[Type::INT8, Type::TEXT, Type::TEXT, Type::INT8])
                .await?,
            get: c
                .prepare_typed(
                    &format!("SELECT {TASK_COLS} FROM tasks WHERE id = $1"),
                    &[Type::INT8],
                )
                .await?,
            list: c
                .prepare_typed(&list, &[Type::INT8, Type::BOOL, Type::INT8, Type::INT8])
                .await?,
            update: c
                .prepare_typed(&update, &[Type::INT8, Type::TEXT, Type::TEXT, Type::BOOL])
                .await?,
            delete: c.prepare_typed(&delete, &[Type::INT8]).await?,
            list_events: c
                .prepare_typed(list_events, &[Type::INT8, Type::INT8, Type::INT8])
                .await?,
            // Boards interleaved (each board's first unpublished event, then each one's second, …)
            // so a long backlog on one board never holds the others back; each board's own
            // order is kept.
            unpublished: c
                .prepare_typed(
                    "SELECT board_id, seq, kind, task_id, payload, created_at FROM \
                       (SELECT board_id, seq, kind, task_id, payload, created_at, \
                               row_number() OVER (PARTITION BY board_id ORDER BY seq) AS rank \
                        FROM events WHERE published_at IS NULL) u \
                     ORDER BY rank, board_id LIMIT $1",
                    &[Type::INT8],
                )
                .await?,
            heads: c
                .prepare_typed(
                    "SELECT id, last_seq FROM boards WHERE id = ANY($1)",
                    &[Type::INT8_ARRAY],
                )
                .await?,
            mark_published: c
                .prepare_typed(
                    "UPDATE events SET published_at = now() WHERE (board_id, seq) IN \
                     (SELECT * FROM unnest($1::int8[], $2::int8[]))",
                    &[Type::INT8_ARRAY, Type::INT8_ARRAY],
                )
                .await?,
            pending: c
                .prepare("SELECT count(*) FROM events WHERE published_at IS NULL")
                .await?,
            prune: c
                .prepare_typed(
                    "DELETE FROM events WHERE published_at IS NOT NULL \
                     AND created_at < now() - make_interval(secs => $1)",
                    &[Type::FLOAT8],
                )
                .await?,
        })
    }
}

/// A pooled connection with its prepared statements.
pub struct PgConn {
    pub client: Client,
    pub stmts: Statements,
}

/// bb8 manager: bb8-postgres connects, then the statements are prepared on the new connection.
pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
}

impl bb8::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgConn, tokio_postgres::Error> {
        let client = self.inner.connect().await?;
        let stmts = Statements::prepare(&client).await?;
        Ok(PgConn { client, stmts })
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// The connection pool.
pub type Pool = bb8::Pool<Manager>;

/// A pooled connection; the wait is `taskboard_db_pool_wait_seconds`.
async fn acquire(pool: &Pool) -> Result<bb8::PooledConnection<'_, Manager>, Error> {
    let start = std::time::Instant::now();
    let c = pool.get().await;
    metrics::histogram!("taskboard_db_pool_wait_seconds").record(start.elapsed().as_secs_f64());
    Ok(c?)
}

/// Builds the pool (lazily: connections open on first use and statements are prepared then).
pub fn pool(pg: tokio_postgres::Config, size: u32, acquire_timeout: Duration) -> Pool {
    bb8::Pool::builder()
        .max_size(size.max(1))
        .connection_timeout(acquire_timeout)
        .max_lifetime(Some(Duration::from_secs(30 * 60)))
        .idle_timeout(Some(Duration::from_secs(5 * 60)))
        .build_unchecked(Manager {
            inner: PostgresConnectionManager::new(pg, NoTls),
        })
}

/// Opens one connection outside the pool (for migrations and the relay's LISTEN session).
///
/// # Errors
/// Connecting fails.
pub async fn connect(
    pg: &tokio_postgres::Config,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    Error,
> {
    Ok(pg.connect(NoTls).await?)
}

/// Applies pending migrations under an advisory lock, so replicas starting together take turns.
///
/// # Errors
/// The database is unreachable or a migration fails (the failing one is rolled back).
pub async fn migrate(pg: &tokio_postgres::Config) -> Result<(), Error> {
    let (mut client, conn) = connect(pg).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
               version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|source| Error::Migration {
                version: *version,
                source,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration");
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

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

/// Inserts a task; returns it with the seq of its `created` event.
///
/// # Errors
/// Database or pool failure.
pub async fn create(pool: &Pool, t: &NewTask<'_>) -> Result<(v1::Task, i64), Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_one(
            &c.stmts.create,
            &[&t.board_id, &t.title, &t.description, &t.created_by],
        )
        .await?;
    Ok((task_from_row(&row, 0), row.get(9)))
}

/// One task, or `None`.
///
/// # Errors
/// Database or pool failure.
pub async fn get(pool: &Pool, id: i64) -> Result<Option<v1::Task>, Error> {
    let c = acquire(pool).await?;
    let row = c.client.query_opt(&c.stmts.get, &[&id]).await?;
    Ok(row.map(|r| task_from_row(&r, 0)))
}

/// A page of a board's tasks, newest first (id breaks ties), with the total matching count and the
/// board's head seq, all from one snapshot.
pub struct TaskPage {
    pub tasks: Vec<v1::Task>,
    pub total: i64,
    pub head_seq: i64,
}

/// Reads a [`TaskPage`].
///
/// # Errors
/// Database or pool failure.
pub async fn list(
    pool: &Pool,
    board_id: i64,
    completed: Option<bool>,
    limit: i64,
    offset: i64,
) -> Result<TaskPage, Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(&c.stmts.list, &[&board_id, &completed, &limit, &offset])
        .await?;
    let total: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
    let head_seq: i64 = rows.first().map(|r| r.get(1)).unwrap_or(0);
    let tasks = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(2).is_some())
        .map(|r| task_from_row(r, 2))
        .collect();
    Ok(TaskPage {
        tasks,
        total,
        head_seq,
    })
}

/// Applies `change` atomically; `None` when the task does not exist.
///
/// # Errors
/// Database or pool failure.
pub async fn update(pool: &Pool, ch: &Change<'_>) -> Result<Option<(v1::Task, i64)>, Error> {
    let c = acquire(pool).await?;
    let row = c
        .client
        .query_opt(
            &c.stmts.update,
            &[&ch.id, &ch.title, &ch.description, &ch.completed],
        )
        .await?;
    Ok(row.map(|r| (task_from_row(&r, 0), r.get(9))))
}

/// Deletes a task; `None` when it did not exist.
///
/// # Errors
/// Database or pool failure.
pub async fn delete(pool: &Pool, id: i64) -> Result<Option<(v1::Task, i64)>, Error> {
    let c = acquire(pool).await?;
    let row = c.client.query_opt(&c.stmts.delete, &[&id]).await?;
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

/// A board's events after `after_seq` (at most `limit`), and the board's head seq.
///
/// # Errors
/// Database or pool failure.
pub async fn list_events(
    pool: &Pool,
    board_id: i64,
    after_seq: i64,
    limit: i64,
) -> Result<(Vec<EventRow>, i64), Error> {
    let c = acquire(pool).await?;
    let rows = c
        .client
        .query(&c.stmts.list_events, &[&board_id, &after_seq, &limit])
        .await?;
    let head: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
    let events = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(2).is_some())
        .map(|r| EventRow::from_row(r, 1))
        .collect();
    Ok((events, head))
}

/// The latest seq of each of `boards` (boards without events are absent).
///
/// # Errors
/// Database or pool failure.
pub async fn heads(pool: &Pool, boards: &[i64]) -> Result<Vec<(i64, i64)>, Error> {
    let c = acquire(pool).await?;
    let rows = c.client.query(&c.stmts.heads, &[&boards]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
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
