-- Idempotent creates: a create sent with an Idempotency-Key records the answer it got; a retry
-- with the same key (same caller) within 24 h gets that answer again and changes nothing.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key         TEXT        PRIMARY KEY,  -- '<caller>:<client key>'
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    seq         BIGINT      NOT NULL,
    -- The task as the first answer showed it (columns as in `tasks`).
    id          BIGINT      NOT NULL,
    board_id    BIGINT      NOT NULL,
    title       TEXT        NOT NULL,
    description TEXT        NOT NULL,
    completed   BOOLEAN     NOT NULL,
    created_by  BIGINT      NOT NULL,
    task_created_at TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    version     BIGINT      NOT NULL
);

-- Expiry by age.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_brin ON idempotency_keys USING brin (created_at);
