//! The SQL text the statements are built from: task columns, the access condition every query
//! carries, and the mutations. Each mutation is one statement (so one transaction and one round
//! trip): the task row, the board's next seq and the outbox event with its browser JSON.
use tokio_postgres::types::Type;

/// Columns of a task, in the order `task_from_row` reads them.
pub(super) const TASK_COLS: &str =
    "id, board_id, title, description, completed, created_by, created_at, \
     updated_at, version, assignee, due_at, position";

/// `TASK_COLS` qualified with the alias `t`.
pub(super) fn task_cols_of_t() -> String {
    TASK_COLS
        .split(", ")
        .map(|c| format!("t.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Descriptions up to this many characters are a search hit's snippet whole.
pub(super) const SNIPPET_WHOLE: usize = 200;

/// Roles that may read a board's tasks and events.
pub const READ_ROLES: &str = "'owner', 'editor', 'viewer'";
/// Roles that may change a board's tasks.
pub const WRITE_ROLES: &str = "'owner', 'editor'";

/// An SQL condition: the caller may act on `board` with one of `roles`. `$all` is the parameter
/// "this caller sees every board" (auth off, the service role, the gateway itself), `$user` the
/// caller's user id (NULL without one). One primary-key probe of `board_members`.
pub fn allowed(board: &str, roles: &str, all: u8, user: u8) -> String {
    allowed_by(board, roles, &format!("${all}"), &format!("${user}"))
}

/// [`allowed`] with any SQL expressions for "sees every board" and the user id.
pub(super) fn allowed_by(board: &str, roles: &str, all: &str, user: &str) -> String {
    format!(
        "({all} OR EXISTS (SELECT 1 FROM board_members m WHERE m.board_id = {board} \
         AND m.user_id = {user} AND m.role IN ({roles})))"
    )
}

/// The browser JSON of an event of kind `kind` for the task row `t` and seq `b.last_seq`: the same
/// text as the SQL function `taskboard_event_payload` (migration 0001), written inline so the
/// prepared plan holds it; a call of a SQL-language function is parsed and planned again on every
/// execution, which was a large part of the database's CPU per change.
pub(super) fn payload_sql(kind: &str, seq: &str) -> String {
    let rfc3339 = |col: &str| {
        format!("to_char(t.{col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    };
    format!(
        "json_build_object('type', '{kind}', 'task_id', t.id, 'board_id', t.board_id, \
           'title', t.title, 'completed', t.completed, \
           'timestamp', floor(extract(epoch FROM now()))::bigint, 'seq', {seq}, \
           'task', json_build_object('id', t.id, 'board_id', t.board_id, 'title', t.title, \
             'description', t.description, 'completed', t.completed, 'created_by', t.created_by, \
             'created_at', {created}, 'updated_at', {updated}, 'version', t.version, \
             'assignee', t.assignee, 'due_at', {due}, 'position', t.position))::text",
        created = rfc3339("created_at"),
        updated = rfc3339("updated_at"),
        due = rfc3339("due_at"),
    )
}

/// A mutation's statement: lock/bump the board's seq, change the task, append the event (made by
/// the user in parameter `$actor`). `{change}` is a data-modifying CTE named `t` returning the
/// task row (after the change, or the deleted row). On an archived or deleted board the seq is not
/// bumped and the statement fails (so the change is rolled back) with SQLSTATE 55000; the board
/// row's lock makes that check exact even against an archive committing at the same moment.
pub(super) fn mutation_sql(change: &str, kind: &str, actor: u8) -> String {
    mutation_sql_with(change, kind, actor, "")
}

/// [`mutation_sql`] with more data-modifying CTEs (`extra`, starting with a comma) that may use
/// `t`, `b` and `e`.
pub(super) fn mutation_sql_with(change: &str, kind: &str, actor: u8, extra: &str) -> String {
    format!(
        "WITH t AS ({change}), \
         b AS (INSERT INTO boards AS b (id, last_seq) SELECT board_id, 1 FROM t \
               ON CONFLICT (id) DO UPDATE SET last_seq = b.last_seq + 1 \
               WHERE b.archived_at IS NULL AND b.deleted_at IS NULL RETURNING last_seq), \
         e AS (INSERT INTO events (board_id, seq, kind, task_id, payload, actor) \
               SELECT t.board_id, b.last_seq, '{kind}', t.id, {payload}, ${actor} FROM t, b \
               RETURNING seq, payload, created_at){extra} \
         SELECT {cols}, COALESCE(e.seq, taskboard_board_closed(t.board_id)), e.payload, \
                e.created_at FROM t LEFT JOIN e ON true",
        cols = task_cols_of_t(),
        payload = payload_sql(kind, "b.last_seq")
    )
}

/// Many plain creates (no idempotency key) in one statement, one array element each (parameters
/// as in `CREATE_MANY_TYPES`): a statement's fixed cost (bind, executor start-up, snapshot, the
/// board's lock and seq bump) is paid once per batch instead of once per create, which is most of
/// the database's CPU per create under load. Ids are drawn first so each row's answer can be
/// matched to its element (`ord`, 1-based); creates a caller may not make are left out (no row);
/// each board's seq is bumped once by its count and its events numbered in element order; an
/// archived or deleted board fails the statement (SQLSTATE 55000) as in `mutation_sql`. The
/// statement locks its boards in id order (a deadlock with another replica's transaction is still
/// possible through its other statements: the batch then runs one by one, as for any failure).
pub(super) fn create_many_sql() -> String {
    let seq = "b.last_seq - n.cnt + n.k";
    format!(
        "WITH i AS (SELECT u.* FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], \
                      $5::int8[], $6::bool[], $7::int8[], $8::timestamptz[], $9::float8[]) \
                    WITH ORDINALITY AS u(board_id, title, description, created_by, user_id, \
                                         all_boards, assignee, due_at, position, ord) \
                    WHERE {ok}), \
         n AS (SELECT i.*, nextval('tasks_id_seq') AS id, \
                      COALESCE(i.position, -nextval('tasks_position_seq')) AS pos, \
                      row_number() OVER (PARTITION BY i.board_id ORDER BY i.ord) AS k, \
                      count(*) OVER (PARTITION BY i.board_id) AS cnt FROM i), \
         t AS (INSERT INTO tasks (id, board_id, title, description, created_by, assignee, due_at, \
                                  position) \
               SELECT id, board_id, title, description, created_by, assignee, due_at, pos FROM n \
               RETURNING {TASK_COLS}), \
         b AS (INSERT INTO boards AS b (id, last_seq) \
               SELECT board_id, count(*) FROM t GROUP BY board_id ORDER BY board_id \
               ON CONFLICT (id) DO UPDATE SET last_seq = b.last_seq + EXCLUDED.last_seq \
               WHERE b.archived_at IS NULL AND b.deleted_at IS NULL RETURNING id, last_seq), \
         e AS (INSERT INTO events (board_id, seq, kind, task_id, payload, actor) \
               SELECT t.board_id, {seq}, 'created', t.id, {payload}, n.user_id \
               FROM t JOIN n ON n.id = t.id JOIN b ON b.id = t.board_id \
               RETURNING task_id, seq, payload, created_at) \
         SELECT n.ord, {cols}, COALESCE(e.seq, taskboard_board_closed(t.board_id)), e.payload, \
                e.created_at \
         FROM t JOIN n ON n.id = t.id LEFT JOIN e ON e.task_id = t.id",
        ok = allowed_by("u.board_id", WRITE_ROLES, "u.all_boards", "u.user_id"),
        cols = task_cols_of_t(),
        payload = payload_sql("created", seq),
    )
}

/// Parameters of `create_many`: arrays of board, title, description, created_by, the caller's
/// user, whether the caller sees all boards, assignee, due_at, position.
pub(super) const CREATE_MANY_TYPES: [Type; 9] = [
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::INT8_ARRAY,
    Type::BOOL_ARRAY,
    Type::INT8_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::FLOAT8_ARRAY,
];

/// Parameters of `create` (the first nine) and `create_keyed`: board, title, description,
/// created_by, user, all boards, assignee, due_at, position, idempotency key.
pub(super) const CREATE_TYPES: [Type; 10] = [
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::BOOL,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::TEXT,
];
