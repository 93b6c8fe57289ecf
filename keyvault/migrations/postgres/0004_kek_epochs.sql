-- KEK epochs (PostgreSQL). Same columns as the SQLite schema; see there.
ALTER TABLE kek_versions
    ADD COLUMN activated_at  BIGINT,
    ADD COLUMN superseded_at BIGINT,
    ADD COLUMN destroyed_at  BIGINT;
UPDATE kek_versions SET activated_at = (extract(epoch FROM now()) * 1000000)::BIGINT WHERE state = 'active';
UPDATE kek_versions SET superseded_at = (extract(epoch FROM now()) * 1000000)::BIGINT WHERE state = 'retired';
