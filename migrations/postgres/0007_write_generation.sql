-- Every transaction that holds the commit-order lock (the log_head row) raises `generation`:
-- appends and shredding. A group planned without the lock is written only if the generation is
-- still the one it read, i.e. nothing it read can have changed (storage/postgres.rs,
-- WRITE_GROUP). PostgreSQL only: SQLite has one writer.
ALTER TABLE log_head ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
