-- Tasks, per-board sequence numbers and the transactional outbox of events.

CREATE TABLE IF NOT EXISTS tasks (
    id          BIGSERIAL PRIMARY KEY,
    board_id    BIGINT      NOT NULL,
    title       TEXT        NOT NULL,
    description TEXT        NOT NULL DEFAULT '',
    completed   BOOLEAN     NOT NULL DEFAULT false,
    created_by  BIGINT      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    version     BIGINT      NOT NULL DEFAULT 1
);

-- A board page, newest first, id as tiebreaker (the list query's ORDER BY, filtered or not).
CREATE INDEX IF NOT EXISTS tasks_board_newest_idx ON tasks (board_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_board_completed_newest_idx
    ON tasks (board_id, completed, created_at DESC, id DESC);

-- One row per board: its latest event sequence number. Mutations lock this row, which
-- serialises a board's commits in seq order (so seq N is always visible before N+1).
CREATE TABLE IF NOT EXISTS boards (
    id       BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

-- The outbox. payload is the browser JSON, built once here and shipped verbatim.
CREATE TABLE IF NOT EXISTS events (
    board_id     BIGINT      NOT NULL,
    seq          BIGINT      NOT NULL,
    kind         TEXT        NOT NULL CHECK (kind IN ('created', 'updated', 'deleted')),
    task_id      BIGINT      NOT NULL,
    payload      TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    PRIMARY KEY (board_id, seq)
);

-- What the relay scans: only unpublished rows, in (board, seq) order.
CREATE INDEX IF NOT EXISTS events_unpublished_idx ON events (board_id, seq) WHERE published_at IS NULL;
-- Retention pruning by age.
CREATE INDEX IF NOT EXISTS events_created_at_idx ON events (created_at);

-- RFC 3339 UTC with microseconds: the same text the REST API gives for a task's timestamps.
CREATE OR REPLACE FUNCTION taskboard_rfc3339(ts TIMESTAMPTZ) RETURNS TEXT
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

-- The browser JSON of an event: the original's fields, plus seq and the full task.
CREATE OR REPLACE FUNCTION taskboard_event_payload(kind TEXT, seq BIGINT, t tasks) RETURNS TEXT
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT json_build_object(
        'type', kind,
        'task_id', t.id,
        'board_id', t.board_id,
        'title', t.title,
        'completed', t.completed,
        'timestamp', floor(extract(epoch FROM now()))::bigint,
        'seq', seq,
        'task', json_build_object(
            'id', t.id,
            'board_id', t.board_id,
            'title', t.title,
            'description', t.description,
            'completed', t.completed,
            'created_by', t.created_by,
            'created_at', taskboard_rfc3339(t.created_at),
            'updated_at', taskboard_rfc3339(t.updated_at),
            'version', t.version
        )
    )::text
    $$;

-- Wake the relay (and WatchTasks streams) as soon as an event commits; they also poll.
CREATE OR REPLACE FUNCTION taskboard_notify_events() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskboard_events', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS events_notify ON events;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION taskboard_notify_events();
