-- Tasks a team works on: who is on it (a member of the board), when it is due, and a position for
-- manual ordering (ascending; new tasks go on top, so a board without moves reads newest first; a
-- move sets a position between two neighbours and is one event).
CREATE SEQUENCE IF NOT EXISTS tasks_position_seq;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS assignee BIGINT;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS due_at TIMESTAMPTZ;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS position DOUBLE PRECISION;
UPDATE tasks SET position = -id WHERE position IS NULL;
SELECT setval('tasks_position_seq', COALESCE((SELECT max(id) FROM tasks), 0) + 1, false);
ALTER TABLE tasks ALTER COLUMN position SET NOT NULL;

-- The board in manual order; a board's tasks by assignee and by due date.
CREATE INDEX IF NOT EXISTS tasks_board_position_idx ON tasks (board_id, position, id);
CREATE INDEX IF NOT EXISTS tasks_board_assignee_idx ON tasks (board_id, assignee)
    WHERE assignee IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_board_due_idx ON tasks (board_id, due_at, id)
    WHERE due_at IS NOT NULL;

-- The answer an idempotent create recorded holds the new fields too.
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS assignee BIGINT;
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS due_at TIMESTAMPTZ;
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS position DOUBLE PRECISION NOT NULL DEFAULT 0;

-- The browser JSON of an event, with the new fields (the statements build the same text inline).
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
            'version', t.version,
            'assignee', t.assignee,
            'due_at', taskboard_rfc3339(t.due_at),
            'position', t.position
        )
    )::text
    $$;
