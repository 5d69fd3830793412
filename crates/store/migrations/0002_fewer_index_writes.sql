-- gimmm store, schema version 2: fewer b-tree writes per message.
--
-- The queue index holds queued rows only (a finished message leaves it
-- instead of moving to another key), and the message-id index holds only
-- rows that still wait for a delivery receipt (the only lookup by message
-- id), so most messages never enter it.
DROP INDEX downstream_queued;
CREATE INDEX downstream_queued ON downstream (id) WHERE state = 0;
DROP INDEX downstream_message_id;
CREATE INDEX downstream_receipt ON downstream (message_id) WHERE receipt = 1;

-- The outbox is keyed by (session, seq): one b-tree write per insert and
-- per delete, and paging by session reads it in key order.
CREATE TABLE outbox_v2 (
    session  TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    body     TEXT    NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
INSERT INTO outbox_v2 (session, seq, body) SELECT session, seq, body FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
