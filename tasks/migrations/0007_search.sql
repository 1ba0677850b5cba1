-- Full-text search over titles (weight A) and descriptions (weight B), English stemming. The
-- vector is kept with the row (computed on write, not per search) and found through a GIN index.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS search tsvector
    GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', description), 'B')
    ) STORED;
CREATE INDEX IF NOT EXISTS tasks_search_idx ON tasks USING GIN (search);
