-- gimmm store, schema version 3: when a message was accepted.
--
-- The FCM HTTP v1 link sends `android.ttl` as what is left of the
-- message's time_to_live when the request goes out, counted from
-- DOWNSTREAM_ACCEPTED (SPEC §8.2). Rows stored before this version have 0:
-- the engine then derives the moment from `expires_at` and the TTL.
ALTER TABLE downstream ADD COLUMN accepted_at INTEGER NOT NULL DEFAULT 0;
