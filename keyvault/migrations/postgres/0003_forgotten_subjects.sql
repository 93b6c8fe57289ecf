-- Forgotten data subjects (PostgreSQL). Same table as the SQLite schema; see there.
CREATE TABLE forgotten_subjects (
    subject      TEXT PRIMARY KEY,
    forgotten_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row, the guard that keeps key creation and forgetting apart (see CREATE_KEYS and
-- destroy_subject in src/storage/postgres.rs). A forget raises `epoch` first, which takes the
-- row's lock until it commits; key creation binding a subject share-locks the row in its one
-- statement and writes nothing if the epoch it locked differs from the one its snapshot saw
-- (a forget committed in between: the statement is then run again, with a fresh snapshot).
CREATE TABLE forget_guard (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO forget_guard (id, epoch) VALUES (1, 0);
