-- Lethe event database, SQLite engine.
-- Streams: one row per stream ever written. `version` is the last version (NULL: no events).
CREATE TABLE streams (
    name       TEXT PRIMARY KEY NOT NULL,
    subject    TEXT,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'erased', 'deleted')),
    version    INTEGER,
    key_id     BLOB,
    created_at INTEGER NOT NULL
);
CREATE INDEX streams_by_subject ON streams (subject) WHERE subject IS NOT NULL;

-- The global log. AUTOINCREMENT keeps SQLite from ever reusing a position, even after rows
-- are removed; Lethe assigns positions itself from log_head, inside the write transaction.
CREATE TABLE events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    event_id    BLOB NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    payload     BLOB,            -- ciphertext; NULL once shredded
    metadata    TEXT NOT NULL,   -- JSON, in clear
    key_id      BLOB,            -- the DEK that encrypted payload (never the key itself)
    digest      BLOB NOT NULL,   -- keyed digest of the content, for idempotent retries
    recorded_at INTEGER NOT NULL -- unix microseconds
);
CREATE UNIQUE INDEX events_by_stream_version ON events (stream, version);

-- The last committed position. Only ever increases.
CREATE TABLE log_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO log_head (id, position) VALUES (1, 0);
