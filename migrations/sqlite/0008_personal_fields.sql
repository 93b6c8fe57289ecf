-- Personal data inside events: event schemas, the schema version each event was written under,
-- the subjects whose personal fields are stored (their field keys live in the key vault) and
-- which streams hold them.

-- Immutable schema versions per event type ("weak schema": JSON Schema 2020-12).
CREATE TABLE event_schemas (
    event_type    TEXT NOT NULL,
    version       INTEGER NOT NULL,
    mode          TEXT NOT NULL CHECK (mode IN ('enforce', 'warn')),
    schema        TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (event_type, version)
);

-- The schema version an event was validated and its personal fields sealed under (NULL: none).
ALTER TABLE events ADD COLUMN schema_version INTEGER;

-- One field key per subject whose personal fields were written: its id (never the key).
-- `forgotten_at` is set by the erasure step that shreds the subject's streams; from that
-- commit on no read decrypts a field sealed with the key.
CREATE TABLE subject_keys (
    subject      TEXT PRIMARY KEY NOT NULL,
    key_id       BLOB NOT NULL UNIQUE,
    forgotten_at INTEGER
);

-- The streams holding personal fields of each subject (for erasure requests, the subject view
-- and exports).
CREATE TABLE field_streams (
    subject TEXT NOT NULL,
    stream  TEXT NOT NULL,
    PRIMARY KEY (subject, stream)
) WITHOUT ROWID;

-- What an erasure of a subject found besides its bound streams: a JSON array of stream names,
-- and the subject's field key.
ALTER TABLE erasure_requests ADD COLUMN field_streams TEXT;
ALTER TABLE erasure_requests ADD COLUMN subject_key_id BLOB;
