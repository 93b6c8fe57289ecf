-- Retention policies (storage limitation, GDPR Art. 5(1)(e)): a subject whose every active
-- bound stream matching `stream_prefix` is older than `keep_for` (an ISO 8601 duration,
-- counted from each stream's last or first event) gets an erasure request filed by Lethe.
CREATE TABLE retention_policies (
    name          TEXT PRIMARY KEY NOT NULL,
    stream_prefix TEXT NOT NULL,
    keep_for      TEXT NOT NULL,
    after_event   TEXT NOT NULL CHECK (after_event IN ('last_event', 'first_event')),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- The policy that filed a request (NULL: a person asked, or Lethe re-applied a lost erasure).
ALTER TABLE erasure_requests ADD COLUMN retention_policy TEXT;
-- A subject gets at most one retention request that was not refused: the sweep files under the
-- audit chain's lock, and this index is the backstop that makes a second filing fail.
CREATE UNIQUE INDEX erasure_requests_retention_once ON erasure_requests (subject)
    WHERE retention_policy IS NOT NULL AND status <> 'refused';
