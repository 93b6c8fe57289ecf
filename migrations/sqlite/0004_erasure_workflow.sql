-- The erasure workflow: acknowledgements by dependent services, refusals, legal holds.
ALTER TABLE erasure_requests ADD COLUMN refused_reason TEXT;

-- The erasure-dependent consumers registered when an erasure was requested. The request waits
-- until each has acknowledged (acked a position at or past the tombstone) or was removed.
CREATE TABLE erasure_dependents (
    erasure_id      BLOB NOT NULL,
    consumer        TEXT NOT NULL,
    acknowledged_at INTEGER,
    removed_at      INTEGER,
    PRIMARY KEY (erasure_id, consumer)
);
CREATE INDEX erasure_dependents_pending ON erasure_dependents (consumer) WHERE acknowledged_at IS NULL;

-- Legal holds block forgetting a subject while active (no `until`, or `until` in the future).
CREATE TABLE legal_holds (
    subject   TEXT PRIMARY KEY NOT NULL,
    reason    TEXT NOT NULL,
    until     INTEGER,
    placed_at INTEGER NOT NULL
);

-- Optional push: a consumer may have a webhook; Lethe POSTs each tombstone to it, signed with
-- HMAC-SHA256 under the consumer's secret, retrying with backoff. A 2xx acknowledges.
ALTER TABLE consumers ADD COLUMN webhook_url TEXT;
ALTER TABLE consumers ADD COLUMN webhook_secret TEXT;
ALTER TABLE erasure_dependents ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE erasure_dependents ADD COLUMN last_attempt_at INTEGER;
ALTER TABLE erasure_dependents ADD COLUMN last_delivery_error TEXT;
ALTER TABLE erasure_dependents ADD COLUMN next_attempt_at INTEGER;
