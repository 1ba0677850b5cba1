//! The SQL the service runs, prepared once on every pooled connection. Each mutation is one
//! statement (so one transaction and one round trip): the task row, the board's next seq and the
//! outbox event with its browser JSON.
use tokio_postgres::{types::Type, Client, Statement};

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
    pub(super) async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
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
