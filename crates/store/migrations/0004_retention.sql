-- gimmm store, schema version 4: retention (SPEC §11).
--
-- Finished downstream rows and upstream ids are deleted once older than
-- store.retention_hours. `done_at` is when a message got its final result
-- (Unix ms); rows finished before this version count from the upgrade, so
-- they are kept a full retention after it.
--
-- No index on the ages: rows are pruned in the order of their keys (row
-- ids are handed out in order, upstream ids are appended), which is the
-- order they age in; an index on `done_at` cost an insert on every final
-- result and a delete on every prune (measured: BENCHMARKS.md, "Retention
-- and disk space"). The walk over `downstream` keeps its place in
-- meta.prune_cursor; a message still queued when the walk passed it is
-- listed in `prune_late` when it is finished, and pruned from there.
ALTER TABLE downstream ADD COLUMN done_at INTEGER;
UPDATE downstream SET done_at = CAST(unixepoch('subsec') * 1000 AS INTEGER) WHERE state = 1;
CREATE TABLE prune_late (id INTEGER PRIMARY KEY);
INSERT INTO meta (key, value) VALUES ('prune_cursor', 0);

-- Row ids are never reused, even when pruning has deleted the highest: the
-- next id handed out after a restart is above this.
INSERT INTO meta (key, value) SELECT 'next_id', coalesce(max(id), 0) + 1 FROM downstream;
