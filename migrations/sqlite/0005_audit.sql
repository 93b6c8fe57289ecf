-- The tamper-evident audit trail of admin actions: each entry's hash covers the previous hash
-- and the entry itself (hash = SHA-256(prev_hash || canonical JSON of the entry)). Never
-- personal data: subjects appear as their pseudonymous ids, never event data.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT,
    request_id BLOB,
    details    TEXT NOT NULL,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
);
CREATE INDEX audit_log_by_subject ON audit_log (subject) WHERE subject IS NOT NULL;

-- The chain's head; its row lock serialises appends to the chain.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));
