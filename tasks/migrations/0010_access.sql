-- Identity providers and access changes.
--
-- Users an identity provider names with a string subject (a UUID, an email) get an internal id on
-- first sight, unique per (issuer, subject). Those ids start at 10^12 so they never meet the
-- numeric subjects of the built-in tokens (below 10^12, used as the id itself) and stay exact in
-- JavaScript (below 2^53).
CREATE SEQUENCE IF NOT EXISTS user_subjects_id_seq START WITH 1000000000000 MINVALUE 1000000000000;
CREATE TABLE IF NOT EXISTS user_subjects (
    user_id    BIGINT      PRIMARY KEY DEFAULT nextval('user_subjects_id_seq'),
    issuer     TEXT        NOT NULL,
    subject    TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);
ALTER SEQUENCE user_subjects_id_seq OWNED BY user_subjects.user_id;

-- A member added, re-roled or removed is an event on the board's own seq (`member_changed`), so
-- every gateway sees it in order: a removed member's sockets get nothing committed after it.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('created', 'updated', 'deleted', 'board_updated', 'board_deleted',
                    'member_changed'));
