-- gimmm store, schema version 1.
-- Downstream messages: queued (state 0) until their final result, then done (state 1).
-- Done rows keep (session, message_id) for idempotency and receipt routing; their body is dropped.
CREATE TABLE downstream (
    id          INTEGER PRIMARY KEY,
    session     TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    group_id    TEXT,
    body        TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL,
    receipt     INTEGER NOT NULL DEFAULT 0,
    state       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (session, message_id)
);
CREATE INDEX downstream_queued ON downstream (state, id);
CREATE INDEX downstream_message_id ON downstream (message_id);

-- Sequenced messages to BALs, kept until the BAL ACKs them.
CREATE TABLE outbox (
    seq      INTEGER PRIMARY KEY,
    session  TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX outbox_session ON outbox (session, seq);

-- Upstream message ids already delivered (FCM resends unacked upstream).
CREATE TABLE upstream_seen (
    message_id TEXT PRIMARY KEY,
    at         INTEGER NOT NULL
);

-- Upstream messages whose category names no configured session.
CREATE TABLE unroutable (
    id        INTEGER PRIMARY KEY,
    category  TEXT NOT NULL,
    body      TEXT NOT NULL,
    at        INTEGER NOT NULL
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('next_seq', 1);
