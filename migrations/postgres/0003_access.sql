-- API tokens (stored as SHA-256 hashes; the token itself is shown once) and durable consumers.
CREATE TABLE api_tokens (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    token_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE consumers (
    name              TEXT PRIMARY KEY NOT NULL,
    stream_prefix     TEXT,
    types             TEXT NOT NULL DEFAULT '[]', -- JSON array of event types (empty: all)
    erasure_dependent BOOLEAN NOT NULL DEFAULT FALSE,
    checkpoint        BIGINT NOT NULL DEFAULT 0, -- last acknowledged position
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
