//! The statements the service runs, prepared once on every pooled connection (their SQL text is
//! built from the pieces in `sql`).
use tokio_postgres::{types::Type, Client, Statement};

use super::sql::{
    allowed, create_many_sql, mutation_sql, mutation_sql_with, task_cols_of_t, CREATE_MANY_TYPES,
    CREATE_TYPES, READ_ROLES, SNIPPET_WHOLE, TASK_COLS, WRITE_ROLES,
};

/// Prepares one of the `list` statements.
async fn prepare_list(c: &Client, sql: &str) -> Result<Statement, tokio_postgres::Error> {
    c.prepare_typed(
        sql,
        &[
            Type::INT8,
            Type::BOOL,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::BOOL,
            Type::INT8,
            Type::TIMESTAMPTZ,
        ],
    )
    .await
}

/// Every statement the service runs, prepared once when a pooled connection is opened.
pub struct Statements {
    pub create: Statement,
    /// Many plain creates in one statement (a group commit's).
    pub create_many: Statement,
    /// `create`, also recording the answer under an idempotency key ($7).
    pub create_keyed: Statement,
    /// The answer recorded under an idempotency key, and whether it is within 24 h.
    pub idempotent: Statement,
    /// Forgets an idempotency key past 24 h.
    pub expire_key: Statement,
    /// Forgets every idempotency key past 24 h.
    pub prune_keys: Statement,
    pub get: Statement,
    /// A page of tasks, newest first; `list_by_position`: the manual order; `list_by_due`:
    /// soonest due first.
    pub list: Statement,
    pub list_by_position: Statement,
    pub list_by_due: Statement,
    pub update: Statement,
    pub delete: Statement,
    pub list_events: Statement,
    /// Full-text search (db::search).
    pub search: Statement,
    /// `list_events` of one task.
    pub task_events: Statement,
    /// The board of a task's kept events (the task may be deleted).
    pub event_task_board: Statement,
    pub behind: Statement,
    pub advance: Statement,
    /// The usual case of `advance` (a run that continues its board's cursor) in one statement.
    pub advance_fast: Statement,
    pub prune: Statement,
    pub pending: Statement,
    pub heads: Statement,
    pub role: Statement,
    pub task_board: Statement,
}

impl Statements {
    pub(super) async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
        // New tasks go on top of the manual order unless placed ($9).
        let insert = format!(
            "INSERT INTO tasks (board_id, title, description, created_by, assignee, due_at, \
                                position) \
             SELECT $1, $2, $3, $4, $7, $8, COALESCE($9, -nextval('tasks_position_seq')) \
             WHERE {ok} RETURNING {TASK_COLS}",
            ok = allowed("$1", WRITE_ROLES, 6, 5)
        );
        let create = mutation_sql(&insert, "created", 5);
        // A second call with the same key fails on the primary key (and the service answers it
        // from the row the first one wrote), so two racing calls never create two tasks.
        let create_keyed = mutation_sql_with(
            &insert,
            "created",
            5,
            ", k AS (INSERT INTO idempotency_keys (key, seq, id, board_id, title, description, \
                     completed, created_by, task_created_at, updated_at, version, assignee, \
                     due_at, position) \
                   SELECT $10, e.seq, t.id, t.board_id, t.title, t.description, t.completed, \
                          t.created_by, t.created_at, t.updated_at, t.version, t.assignee, \
                          t.due_at, t.position FROM t, e)",
        );
        let update = mutation_sql(
            &format!(
                "UPDATE tasks SET title = COALESCE($2, title), \
                 description = COALESCE($3, description), completed = COALESCE($4, completed), \
                 assignee = CASE WHEN $8::int8 IS NULL THEN assignee WHEN $8 = 0 THEN NULL \
                                 ELSE $8 END, \
                 due_at = CASE WHEN $10 THEN NULL ELSE COALESCE($9, due_at) END, \
                 position = COALESCE($11, position), \
                 updated_at = now(), version = version + 1 \
                 WHERE id = $1 AND ($7::int8 IS NULL OR version = $7) AND {ok} RETURNING {TASK_COLS}",
                ok = allowed("tasks.board_id", WRITE_ROLES, 6, 5)
            ),
            "updated",
            5,
        );
        let delete = mutation_sql(
            &format!(
                "DELETE FROM tasks WHERE id = $1 AND ($4::int8 IS NULL OR version = $4) AND {ok} \
                 RETURNING {TASK_COLS}",
                ok = allowed("tasks.board_id", WRITE_ROLES, 3, 2)
            ),
            "deleted",
            2,
        );
        // Access, count, head seq and page in one statement, hence one snapshot; always returns at
        // least one row (nothing but `allowed = false` for a caller who may not read the board).
        // Filters: $2 completed, $7 assignee (0: unassigned), $8 due before. One statement per
        // order, so each pages through its index instead of sorting the board.
        let filter = "board_id = $1 AND ($2::bool IS NULL OR completed = $2) \
             AND ($7::int8 IS NULL OR ($7 = 0 AND assignee IS NULL) OR assignee = $7) \
             AND ($8::timestamptz IS NULL OR due_at < $8)";
        let list = |order: &str| {
            format!(
                "SELECT c.total, c.head, c.ok, {cols} FROM \
                   (SELECT count(tasks.id) AS total, \
                           COALESCE((SELECT last_seq FROM boards WHERE id = $1), 0) AS head, \
                           a.ok \
                    FROM (SELECT {ok} AS ok) a LEFT JOIN tasks ON a.ok AND {filter} \
                    GROUP BY a.ok) c \
                 LEFT JOIN LATERAL \
                   (SELECT {TASK_COLS} FROM tasks WHERE c.ok AND {filter} \
                    ORDER BY {order} LIMIT $3 OFFSET $4) t ON true",
                cols = task_cols_of_t(),
                ok = allowed("$1", READ_ROLES, 6, 5)
            )
        };
        // Access, head and page in one snapshot; at least one row (`ok` false: may not read).
        let events_page = |only: &str| {
            format!(
                "SELECT COALESCE((SELECT last_seq FROM boards WHERE id = $1), 0), \
                      e.board_id, e.seq, e.kind, e.task_id, e.payload, e.created_at, a.ok, \
                      e.actor \
                 FROM (SELECT {ok} AS ok) a LEFT JOIN LATERAL \
                   (SELECT board_id, seq, kind, task_id, payload, created_at, actor FROM events \
                    WHERE a.ok AND board_id = $1 {only} AND seq > $2 ORDER BY seq LIMIT $3) e \
                 ON true",
                ok = allowed("$1", READ_ROLES, 5, 4)
            )
        };
        let list_events = events_page("");
        // A task's history ($6) through the (task_id, seq) index.
        let task_events = events_page("AND task_id = $6");
        // Matches (board $2, or every board of user $5 unless $6 sees all), best first; the count
        // and access in every row, at least one row; highlights computed for the page only, with
        // matches between U+0002 and U+0003 (removed from the text first). ts_headline drops what
        // its parser takes for HTML tags and entities, so `<` and `&` stand aside as U+E000 and
        // U+E001 while it runs: the user's text comes back as written.
        let headline = |col: &str, opts: &str| {
            format!(
                "translate(ts_headline('english', \
                   translate(t.{col}, '<&' || chr(2) || chr(3), chr(57344) || chr(57345)), q.q, \
                   'StartSel=' || chr(2) || ', StopSel=' || chr(3) || ', {opts}'), \
                 chr(57344) || chr(57345), '<&')"
            )
        };
        // A short description whole; a long one as passages around its matches.
        let snippet = format!(
            "CASE WHEN length(t.description) <= {SNIPPET_WHOLE} THEN {all} ELSE {parts} END",
            all = headline("description", "HighlightAll=true"),
            parts = headline(
                "description",
                "MaxFragments=2, MaxWords=20, MinWords=8, FragmentDelimiter=\" … \""
            ),
        );
        let search = format!(
            "WITH q AS (SELECT websearch_to_tsquery('english', $1) AS q), \
             a AS (SELECT ($2::int8 IS NULL OR {ok}) AS ok), \
             m AS MATERIALIZED ( \
               SELECT t.id, ts_rank_cd(t.search, q.q) AS rank FROM tasks t, q, a \
               WHERE a.ok AND t.search @@ q.q AND ($2::int8 IS NULL OR t.board_id = $2) \
                 AND ($6 OR $2::int8 IS NOT NULL OR t.board_id IN \
                      (SELECT board_id FROM board_members WHERE user_id = $5))), \
             p AS (SELECT id, rank FROM m ORDER BY rank DESC, id DESC LIMIT $3 OFFSET $4) \
             SELECT (SELECT count(*) FROM m), a.ok, p.rank, {cols}, {title}, {snippet} \
             FROM a CROSS JOIN q LEFT JOIN (p JOIN tasks t ON t.id = p.id) ON true \
             ORDER BY p.rank DESC, t.id DESC",
            ok = allowed("$2", READ_ROLES, 6, 5),
            cols = task_cols_of_t(),
            title = headline("title", "HighlightAll=true"),
            snippet = snippet,
        );
        Ok(Statements {
            search: c
                .prepare_typed(
                    &search,
                    &[
                        Type::TEXT,
                        Type::INT8,
                        Type::INT8,
                        Type::INT8,
                        Type::INT8,
                        Type::BOOL,
                    ],
                )
                .await?,
            create: c.prepare_typed(&create, &CREATE_TYPES[..9]).await?,
            create_many: c
                .prepare_typed(&create_many_sql(), &CREATE_MANY_TYPES)
                .await?,
            create_keyed: c.prepare_typed(&create_keyed, &CREATE_TYPES).await?,
            idempotent: c
                .prepare_typed(
                    "SELECT id, board_id, title, description, completed, created_by, \
                            task_created_at, updated_at, version, assignee, due_at, position, seq, \
                            created_at > now() - interval '24 hours' \
                     FROM idempotency_keys WHERE key = $1",
                    &[Type::TEXT],
                )
                .await?,
            expire_key: c
                .prepare_typed(
                    "DELETE FROM idempotency_keys WHERE key = $1 \
                     AND created_at <= now() - interval '24 hours'",
                    &[Type::TEXT],
                )
                .await?,
            prune_keys: c
                .prepare(
                    "DELETE FROM idempotency_keys WHERE created_at <= now() - interval '24 hours'",
                )
                .await?,
            get: c
                .prepare_typed(
                    &format!(
                        "SELECT {TASK_COLS} FROM tasks WHERE id = $1 AND {ok}",
                        ok = allowed("tasks.board_id", READ_ROLES, 3, 2)
                    ),
                    &[Type::INT8, Type::INT8, Type::BOOL],
                )
                .await?,
            list: prepare_list(c, &list("created_at DESC, id DESC")).await?,
            list_by_position: prepare_list(c, &list("position, id")).await?,
            list_by_due: prepare_list(c, &list("due_at NULLS LAST, id")).await?,
            update: c
                .prepare_typed(
                    &update,
                    &[
                        Type::INT8,
                        Type::TEXT,
                        Type::TEXT,
                        Type::BOOL,
                        Type::INT8,
                        Type::BOOL,
                        Type::INT8,
                        Type::INT8,
                        Type::TIMESTAMPTZ,
                        Type::BOOL,
                        Type::FLOAT8,
                    ],
                )
                .await?,
            delete: c
                .prepare_typed(&delete, &[Type::INT8, Type::INT8, Type::BOOL, Type::INT8])
                .await?,
            list_events: c
                .prepare_typed(
                    &list_events,
                    &[Type::INT8, Type::INT8, Type::INT8, Type::INT8, Type::BOOL],
                )
                .await?,
            task_events: c
                .prepare_typed(
                    &task_events,
                    &[
                        Type::INT8,
                        Type::INT8,
                        Type::INT8,
                        Type::INT8,
                        Type::BOOL,
                        Type::INT8,
                    ],
                )
                .await?,
            event_task_board: c
                .prepare_typed(
                    "SELECT board_id FROM events WHERE task_id = $1 LIMIT 1",
                    &[Type::INT8],
                )
                .await?,
            role: c
                .prepare_typed(
                    "SELECT role FROM board_members WHERE board_id = $1 AND user_id = $2",
                    &[Type::INT8, Type::INT8],
                )
                .await?,
            task_board: c
                .prepare_typed("SELECT board_id FROM tasks WHERE id = $1", &[Type::INT8])
                .await?,
            // The relay's safety net: events behind the cursor of boards whose first unpublished
            // event committed more than $2 seconds ago (the committing replica had its chance),
            // boards interleaved (each board's first, then each one's second, …) so one board's
            // long backlog never holds the others back; each board's own order is kept.
            behind: c
                .prepare_typed(
                    "SELECT e.board_id, e.seq, e.kind, e.task_id, e.payload, e.created_at FROM \
                       (SELECT b.id, COALESCE(c.published_seq, 0) AS p FROM boards b \
                        LEFT JOIN outbox_cursor c ON c.board_id = b.id \
                        WHERE b.last_seq > COALESCE(c.published_seq, 0)) q \
                     CROSS JOIN LATERAL \
                       (SELECT board_id, seq, kind, task_id, payload, created_at, \
                               row_number() OVER (ORDER BY seq) AS rank \
                        FROM events WHERE board_id = q.id AND seq > q.p \
                        ORDER BY seq LIMIT $1) e \
                     WHERE EXISTS (SELECT 1 FROM events f WHERE f.board_id = q.id \
                                   AND f.seq = q.p + 1 \
                                   AND f.created_at < now() - make_interval(secs => $2)) \
                     ORDER BY e.rank, e.board_id LIMIT $1",
                    &[Type::INT8, Type::FLOAT8],
                )
                .await?,
            // Moves each board's cursor to `last` when its run starts right after it; returns the
            // boards it moved, and whether each has kept runs (then `advance` must merge them).
            // One run per board ($1 distinct).
            advance_fast: c
                .prepare_typed(
                    "INSERT INTO outbox_cursor AS c (board_id, published_seq) \
                     SELECT u.b, u.l FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS u(b, f, l) \
                     WHERE u.f = 1 OR EXISTS (SELECT 1 FROM outbox_cursor x \
                                              WHERE x.board_id = u.b AND x.published_seq >= u.f - 1) \
                     ON CONFLICT (board_id) DO UPDATE \
                     SET published_seq = GREATEST(c.published_seq, EXCLUDED.published_seq) \
                     RETURNING c.board_id, \
                       EXISTS (SELECT 1 FROM outbox_runs r WHERE r.board_id = c.board_id)",
                    &[Type::INT8_ARRAY, Type::INT8_ARRAY, Type::INT8_ARRAY],
                )
                .await?,
            // Records the published runs and moves each board's cursor as far as they reach
            // without a gap (migration 0005).
            advance: c
                .prepare_typed(
                    "SELECT taskboard_advance($1::int8[], $2::int8[], $3::int8[])",
                    &[Type::INT8_ARRAY, Type::INT8_ARRAY, Type::INT8_ARRAY],
                )
                .await?,
            // Every asked board (0 for one without events), and whether the caller may read it.
            heads: c
                .prepare_typed(
                    &format!(
                        "SELECT q.id, COALESCE(b.last_seq, 0), {ok} \
                         FROM unnest($1::int8[]) AS q(id) LEFT JOIN boards b ON b.id = q.id",
                        ok = allowed("q.id", READ_ROLES, 3, 2)
                    ),
                    &[Type::INT8_ARRAY, Type::INT8, Type::BOOL],
                )
                .await?,
            pending: c
                .prepare(
                    "SELECT COALESCE(sum(b.last_seq - COALESCE(c.published_seq, 0)), 0)::int8 \
                     FROM boards b LEFT JOIN outbox_cursor c ON c.board_id = b.id",
                )
                .await?,
            // Only what is behind the cursor (published) and past retention.
            prune: c
                .prepare_typed(
                    "DELETE FROM events e USING outbox_cursor c \
                     WHERE e.board_id = c.board_id AND e.seq <= c.published_seq \
                     AND e.created_at < now() - make_interval(secs => $1)",
                    &[Type::FLOAT8],
                )
                .await?,
        })
    }
}
