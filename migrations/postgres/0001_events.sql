-- Lethe event database, PostgreSQL engine.
-- Streams: one row per stream ever written. `version` is the last version (NULL: no events).
CREATE TABLE streams (
    name       TEXT PRIMARY KEY,
    subject    TEXT,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'erased', 'deleted')),
    version    BIGINT,
    key_id     UUID,
    created_at BIGINT NOT NULL
);
CREATE INDEX streams_by_subject ON streams (subject) WHERE subject IS NOT NULL;

-- The global log. Positions are assigned by Lethe from log_head inside the write transaction,
-- while holding log_head's row lock until commit: that lock is the commit-order lock which
-- makes positions become visible in increasing order (see ARCHITECTURE.md, "Ordering").
CREATE TABLE events (
    position    BIGINT PRIMARY KEY,
    stream      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    event_id    UUID NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    payload     BYTEA,           -- ciphertext; NULL once shredded
    metadata    TEXT NOT NULL,   -- JSON, in clear
    key_id      UUID,            -- the DEK that encrypted payload (never the key itself)
    digest      BYTEA NOT NULL,  -- keyed digest of the content, for idempotent retries
    recorded_at BIGINT NOT NULL, -- unix microseconds
    UNIQUE (stream, version)
);

-- The last committed position. Only ever increases.
CREATE TABLE log_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT NOT NULL
);
INSERT INTO log_head (id, position) VALUES (1, 0);
