-- Boards as things of their own (name, creator) with members and roles. Boards made implicitly by
-- a first task (authentication off, or the service role) keep working: they have no members.

ALTER TABLE boards ADD COLUMN IF NOT EXISTS name TEXT NOT NULL DEFAULT '';
ALTER TABLE boards ADD COLUMN IF NOT EXISTS created_by BIGINT;
ALTER TABLE boards ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ NOT NULL DEFAULT now();

-- Ids of boards made with CreateBoard; it skips ids already taken by implicit boards.
CREATE SEQUENCE IF NOT EXISTS boards_id_seq;
SELECT setval('boards_id_seq', COALESCE((SELECT max(id) FROM boards), 0) + 1, false);

CREATE TABLE IF NOT EXISTS board_members (
    board_id BIGINT      NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    user_id  BIGINT      NOT NULL,
    role     TEXT        NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (board_id, user_id)
);

-- "My boards".
CREATE INDEX IF NOT EXISTS board_members_user_idx ON board_members (user_id, board_id);
