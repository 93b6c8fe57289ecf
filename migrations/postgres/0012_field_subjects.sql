-- The field index as a column of the events: the subjects whose personal fields an event
-- seals, under a GIN index. An append adds one entry to the index's pending list per event,
-- merged in bulk later, where the `field_streams` table took a B-tree row (an ON CONFLICT
-- probe and an insert) per new (subject, stream) pair inside the serialized group write.
-- The streams holding a subject's fields are the distinct streams of its events.
-- Compared bytewise (COLLATE "C"): subject ids are ASCII ids, and the index's merges sort
-- and compare entries, which the database's default collation makes slower for no use.
ALTER TABLE events ADD COLUMN field_subjects TEXT[] COLLATE "C";

-- Events written before this migration: which event sealed which subject's field is not
-- recorded, only which streams hold each subject's fields; each event with a schema version
-- in such a stream takes that stream's subjects, which answers the same streams.
UPDATE events e SET field_subjects = f.subjects
FROM (SELECT stream, array_agg(subject ORDER BY subject) AS subjects FROM field_streams GROUP BY stream) f
WHERE e.stream = f.stream AND e.schema_version IS NOT NULL;

DROP TABLE field_streams;

CREATE INDEX events_by_field_subject ON events USING gin (field_subjects) WHERE field_subjects IS NOT NULL;
