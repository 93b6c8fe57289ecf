-- KEK epochs (SQLite): when each KEK version became active, was superseded and was destroyed,
-- in unix microseconds of the vault's clock, so that the vault can start a new epoch every
-- `rotate_every` and destroy a superseded one `retain` after it was superseded.
-- A destroyed epoch keeps state 'retired' (so the state check needs no table rebuild): its
-- `destroyed_at` says the provider no longer holds its KEK, and no key is wrapped with it.
ALTER TABLE kek_versions ADD COLUMN activated_at BIGINT;
ALTER TABLE kek_versions ADD COLUMN superseded_at BIGINT;
ALTER TABLE kek_versions ADD COLUMN destroyed_at BIGINT;
-- Versions recorded before epochs existed count from this migration: the active one as
-- activated now, the retired ones as superseded now.
UPDATE kek_versions SET activated_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000000 WHERE state = 'active';
UPDATE kek_versions SET superseded_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000000 WHERE state = 'retired';
