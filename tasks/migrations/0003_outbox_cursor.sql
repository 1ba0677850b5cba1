-- The outbox is written once: what has been published is a per-board cursor (one small row per
-- board, advanced once per published batch) instead of an UPDATE of every event row. A board's
-- seqs are gap-free and commit in order (its `boards` row is locked by every mutation), so
-- "published up to seq N" says everything about a board.

CREATE TABLE IF NOT EXISTS outbox_cursor (
    board_id      BIGINT PRIMARY KEY,
    published_seq BIGINT NOT NULL
);

-- Start where the old marks were: before a board's first unpublished event, or at its head.
INSERT INTO outbox_cursor (board_id, published_seq)
SELECT b.id,
       COALESCE((SELECT min(e.seq) - 1 FROM events e
                 WHERE e.board_id = b.id AND e.published_at IS NULL), b.last_seq)
FROM boards b
ON CONFLICT (board_id) DO NOTHING;

-- No longer maintained on every insert. (`published_at` itself stays, unused and NULL from now
-- on, so replicas of the previous release still running during a rolling upgrade do not fail;
-- they republish, which subscribers drop by seq.)
DROP INDEX IF EXISTS events_unpublished_idx;

-- Pruning by age: a BRIN index costs next to nothing per insert for a column that grows with
-- insertion order, unlike the B-tree it replaces.
DROP INDEX IF EXISTS events_created_at_idx;
CREATE INDEX IF NOT EXISTS events_created_at_brin ON events USING brin (created_at);
