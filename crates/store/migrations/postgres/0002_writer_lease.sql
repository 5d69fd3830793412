-- gimmm store on PostgreSQL, schema version 2: the writer lease (SPEC §12).
--
-- One node writes at a time: the one holding this lease. A node takes it
-- only once it has expired (by the server's clock, so the nodes' clocks do
-- not matter), with a new epoch; the holder renews it in the first
-- statement of every transaction it commits, matching holder and epoch, so
-- a node whose lease was taken over can no longer commit anything: the
-- renewal finds no row and the transaction is rolled back. The row lock
-- that renewal takes makes a takeover wait for a commit in progress.
CREATE TABLE writer_lease (
    id         INTEGER     PRIMARY KEY CHECK (id = 1),
    holder     TEXT        NOT NULL,
    epoch      BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO writer_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, '-infinity');

-- The renewal inside a transaction: raises (SQLSTATE GM001) when this node
-- no longer holds the lease, which aborts the transaction, so a writer can
-- send its whole transaction at once and the server still refuses to
-- commit it for a node that lost the lease.
CREATE FUNCTION gimmm_renew_lease(p_holder TEXT, p_epoch BIGINT, p_secs DOUBLE PRECISION)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE writer_lease SET expires_at = now() + make_interval(secs => p_secs)
     WHERE id = 1 AND holder = p_holder AND epoch = p_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gimmm: this node no longer holds the writer lease'
            USING ERRCODE = 'GM001';
    END IF;
END
$$;
