-- Erasure requests: forgetting a subject or deleting a stream, recorded durably so that a crash
-- or an unreachable key vault at any step leaves a request that is driven to completion later.
CREATE TABLE erasure_requests (
    id                UUID PRIMARY KEY,
    kind              TEXT NOT NULL CHECK (kind IN ('subject', 'stream')),
    subject           TEXT,
    stream            TEXT,
    status            TEXT NOT NULL,
    -- JSON array of [stream, key_id] pairs: the streams this request shredded (set once).
    streams           TEXT,
    keys_destroyed    BIGINT NOT NULL DEFAULT 0,
    reason            TEXT,
    requested_by      TEXT,
    reference         TEXT,
    requested_at      BIGINT NOT NULL,
    keys_destroyed_at BIGINT,
    completed_at      BIGINT,
    tombstone_position BIGINT
);
CREATE INDEX erasure_requests_by_subject ON erasure_requests (subject);
CREATE INDEX erasure_requests_unfinished ON erasure_requests (status) WHERE status <> 'completed';
