-- Tokens that a change sets to a new random value, in its own transaction, so that what a
-- process found and cached stays true while the token is unchanged (see
-- `storage/token_checks.rs`). Random rather than counters, so that a database restored to an
-- older state and changed again never repeats a token a process has seen.
-- - field_key_forgotten: set by the erasure step that marks a subject's field key forgotten;
--   readers cache which field keys were not forgotten.
-- - subject_erasure_filed: set by every filing of subject erasure requests; the group writer
--   caches which subjects have none.
CREATE TABLE change_tokens (
    id                    INTEGER PRIMARY KEY CHECK (id = 1),
    field_key_forgotten   BIGINT NOT NULL,
    subject_erasure_filed BIGINT NOT NULL
);
INSERT INTO change_tokens (id, field_key_forgotten, subject_erasure_filed) VALUES (1, 0, 0);
