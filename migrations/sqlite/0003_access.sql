-- API tokens (stored as SHA-256 hashes; the token itself is shown once) and durable consumers.
CREATE TABLE api_tokens (
    id         BLOB PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE consumers (
    name              TEXT PRIMARY KEY NOT NULL,
    stream_prefix     TEXT,
    types             TEXT NOT NULL DEFAULT '[]', -- JSON array of event types (empty: all)
    erasure_dependent INTEGER NOT NULL DEFAULT 0,
    checkpoint        INTEGER NOT NULL DEFAULT 0, -- last acknowledged position
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
