-- The field index as an inverted index over the event log: one row per event that seals
-- personal fields, its rowid the event's position, listing the subjects of those fields (each
-- as the lower-case hex of its UTF-8 bytes: FTS5 tokenizers fold case and split on
-- punctuation, and subject ids are case-sensitive with '-', '.', ':', '@' and '_' in them).
-- FTS5 keeps an append's entries as a new segment written at commit and merges segments in
-- bulk, where the `field_streams` table took a B-tree row per new (subject, stream) pair in
-- the one write transaction: a random leaf page per pair, each written whole to the WAL.
-- The streams holding a subject's fields are the distinct streams of the events it lists.
-- Contentless (the events hold the data), with neither token positions nor column sizes:
-- the index only ever answers "which rows name this token".
CREATE VIRTUAL TABLE field_index USING fts5(
    subjects,
    content = '',
    columnsize = 0,
    detail = none,
    tokenize = 'ascii'
);

-- Events written before this migration: which event sealed which subject's field is not
-- recorded, only which streams hold each subject's fields; each event with a schema version
-- in such a stream takes that stream's subjects, which answers the same streams.
-- (Each stream's list is built once: `field_streams` is keyed by subject first.)
INSERT INTO field_index (rowid, subjects)
SELECT e.position, s.subjects
FROM (SELECT stream, group_concat(lower(hex(subject)), ' ') AS subjects FROM field_streams GROUP BY stream) s
JOIN events e ON e.stream = s.stream
WHERE e.schema_version IS NOT NULL;

DROP TABLE field_streams;
