-- A token the erasure step that marks a subject's field key forgotten sets to a new random
-- value, in the same transaction. A reader that checked a page's field keys against
-- `subject_keys` (none forgotten) need not check them again while the token is unchanged:
-- no key was marked forgotten since. Random rather than a counter, so that a database
-- restored to an older state and forgotten in again never repeats a token a process has seen.
CREATE TABLE field_key_forgets (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    token BIGINT NOT NULL
);
INSERT INTO field_key_forgets (id, token) VALUES (1, 0);
