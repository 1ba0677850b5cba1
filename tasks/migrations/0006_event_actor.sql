-- History: who made each change (the user of the call; NULL without one), and a task's own events
-- found without scanning its board's log.
ALTER TABLE events ADD COLUMN IF NOT EXISTS actor BIGINT;
CREATE INDEX IF NOT EXISTS events_task_idx ON events (task_id, seq);
