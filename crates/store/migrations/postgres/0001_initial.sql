-- gimmm store on PostgreSQL, schema version 1 (SPEC §12). The same tables as
-- the SQLite store (migrations/0001..0004), written for PostgreSQL at once.
--
-- Downstream messages: queued (state 0) until their final result, then done
-- (state 1, body dropped, kept for idempotency and receipt routing until
-- the retention prunes them by `done_at`).
CREATE TABLE downstream (
    id          BIGINT   PRIMARY KEY,
    session     TEXT     NOT NULL,
    message_id  TEXT     NOT NULL,
    group_id    TEXT,
    body        TEXT,
    attempts    INTEGER  NOT NULL DEFAULT 0,
    not_before  BIGINT   NOT NULL DEFAULT 0,
    accepted_at BIGINT   NOT NULL DEFAULT 0,
    expires_at  BIGINT   NOT NULL,
    receipt     BOOLEAN  NOT NULL DEFAULT FALSE,
    state       SMALLINT NOT NULL DEFAULT 0,
    done_at     BIGINT,
    UNIQUE (session, message_id)
);
-- Partial indexes: a row is in the queue index while queued, in the receipt
-- index while it waits for a receipt, in the prune index once finished.
CREATE INDEX downstream_queued ON downstream (id) WHERE state = 0;
CREATE INDEX downstream_receipt ON downstream (message_id) WHERE receipt;
CREATE INDEX downstream_done ON downstream (done_at) WHERE state = 1;

-- Sequenced messages to BALs, kept until the BAL ACKs them.
CREATE TABLE outbox (
    session  TEXT   NOT NULL,
    seq      BIGINT NOT NULL,
    body     TEXT   NOT NULL,
    PRIMARY KEY (session, seq)
);

-- Upstream message ids already delivered (FCM resends; ingress keys).
CREATE TABLE upstream_seen (
    message_id TEXT   PRIMARY KEY,
    at         BIGINT NOT NULL
);
CREATE INDEX upstream_seen_at ON upstream_seen (at);

-- Upstream messages whose category names no configured session.
CREATE TABLE unroutable (
    id        BIGSERIAL PRIMARY KEY,
    category  TEXT   NOT NULL,
    body      TEXT   NOT NULL,
    at        BIGINT NOT NULL
);

-- Counters that must survive their rows: the next sequence id and the next
-- downstream row id are never handed out twice, pruned or not.
CREATE TABLE meta (
    key   TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('next_seq', 1), ('next_id', 1);
