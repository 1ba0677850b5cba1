-- Boards as a product: a description, archiving (read-only) and deletion (a tombstone row keeps the
-- board's seq, so the final event is published in order and the id is never reused). Board
-- changes are events on the board's own seq.
ALTER TABLE boards ADD COLUMN IF NOT EXISTS description TEXT NOT NULL DEFAULT '';
ALTER TABLE boards ADD COLUMN IF NOT EXISTS archived_at TIMESTAMPTZ;
ALTER TABLE boards ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ;

ALTER TABLE events DROP CONSTRAINT IF EXISTS events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('created', 'updated', 'deleted', 'board_updated', 'board_deleted'));

-- A task change on an archived or deleted board: the task statement calls this when the board's
-- seq could not be bumped, so the whole statement (and its change) is rolled back.
CREATE OR REPLACE FUNCTION taskboard_board_closed(board BIGINT) RETURNS BIGINT
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'board % is archived or deleted: its tasks are read-only', board
        USING ERRCODE = 'object_not_in_prerequisite_state';
END
$$;
