-- gimmm store, schema version 4: retention (SPEC §11).
--
-- Finished downstream rows and upstream ids are deleted once older than
-- store.retention_hours. `done_at` is when a message got its final result
-- (Unix ms); rows finished before this version count from the upgrade, so
-- they are kept a full retention after it. The partial index holds finished
-- rows only, oldest first: what a prune step deletes is the front of it.
ALTER TABLE downstream ADD COLUMN done_at INTEGER;
UPDATE downstream SET done_at = CAST(unixepoch('subsec') * 1000 AS INTEGER) WHERE state = 1;
CREATE INDEX downstream_done ON downstream (done_at) WHERE state = 1;
CREATE INDEX upstream_seen_at ON upstream_seen (at);

-- Row ids are never reused, even when pruning has deleted the highest: the
-- next id handed out after a restart is above this.
INSERT INTO meta (key, value) SELECT 'next_id', coalesce(max(id), 0) + 1 FROM downstream;
