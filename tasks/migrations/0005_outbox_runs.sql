-- Published runs that could not move a cursor yet: with several replicas publishing what they
-- committed, a replica may publish seqs 8..9 of a board before another has confirmed 7. The run is
-- kept here until the gap before it is published, then the cursor moves over all of it at once, so
-- interleaved replicas never leave a cursor stuck (and the scan never republishes what was sent).
CREATE TABLE IF NOT EXISTS outbox_runs (
    board_id  BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL,
    PRIMARY KEY (board_id, first_seq)
);

-- Records that seqs first..last of each board were published (and confirmed), and moves each
-- board's cursor as far as the runs now reach without a gap. Cursors never move back.
CREATE OR REPLACE FUNCTION taskboard_advance(boards BIGINT[], firsts BIGINT[], lasts BIGINT[])
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    i   INT;
    b   BIGINT;
    cur BIGINT;
    nxt BIGINT;
BEGIN
    FOR i IN 1 .. coalesce(array_length(boards, 1), 0) LOOP
        b := boards[i];
        INSERT INTO outbox_cursor (board_id, published_seq) VALUES (b, 0)
            ON CONFLICT (board_id) DO NOTHING;
        -- Serialises the replicas advancing this board.
        SELECT published_seq INTO cur FROM outbox_cursor WHERE board_id = b FOR UPDATE;
        IF firsts[i] <= cur + 1 AND NOT EXISTS (SELECT 1 FROM outbox_runs WHERE board_id = b) THEN
            -- The usual case: the run continues the cursor.
            UPDATE outbox_cursor SET published_seq = greatest(cur, lasts[i]) WHERE board_id = b;
            CONTINUE;
        END IF;
        INSERT INTO outbox_runs (board_id, first_seq, last_seq) VALUES (b, firsts[i], lasts[i])
            ON CONFLICT (board_id, first_seq)
            DO UPDATE SET last_seq = greatest(outbox_runs.last_seq, EXCLUDED.last_seq);
        LOOP
            SELECT max(last_seq) INTO nxt FROM outbox_runs
                WHERE board_id = b AND first_seq <= cur + 1 AND last_seq > cur;
            EXIT WHEN nxt IS NULL;
            cur := nxt;
        END LOOP;
        DELETE FROM outbox_runs WHERE board_id = b AND last_seq <= cur;
        UPDATE outbox_cursor SET published_seq = cur WHERE board_id = b AND published_seq < cur;
    END LOOP;
END
$$;
