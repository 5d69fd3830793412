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
