"""The `eventsourcing` library's own recorder test cases (`eventsourcing.tests.persistence`),
each test against a fresh `lethe serve`: the application recorder's cases expect an empty log.
"""

from __future__ import annotations

import json

from unittest import TestCase

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
)

from eventsourcing.persistence import OperationalError

from lethe_eventsourcing import (
    LetheAggregateRecorder,
    LetheApplicationRecorder,
    LetheOperationalError,
    LetheProgrammingError,
    StreamErasedError,
)
from lethe_eventsourcing._http import Transport, path

from server import LetheServer


class FreshServer(TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = LetheServer()
        self.transport = Transport(self.server.url, self.server.admin_token)

    def tearDown(self) -> None:
        self.transport.close()
        self.server.stop()
        super().tearDown()


class TestLetheAggregateRecorder(FreshServer, AggregateRecorderTestCase):
    def create_recorder(self) -> LetheAggregateRecorder:
        return LetheAggregateRecorder(self.transport, "aggregate-")


class TestLetheApplicationRecorder(FreshServer, ApplicationRecorderTestCase):
    def create_recorder(self) -> LetheApplicationRecorder:
        return LetheApplicationRecorder(self.transport, "app-")

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestLetheSpecifics(FreshServer):
    """What the library's cases leave out: conflicts between two recorders, other
    applications' streams, shredded aggregates, and snapshots bound to the subject."""

    def event(self, originator_id, version, state=b'{"a":1}', topic="t:A.B"):
        return StoredEvent(originator_id=originator_id, originator_version=version, topic=topic, state=state)

    def test_two_writers_of_one_aggregate_conflict(self) -> None:
        from uuid import uuid4

        one = LetheApplicationRecorder(self.transport, "app-")
        other = LetheApplicationRecorder(Transport(self.server.url, self.server.admin_token), "app-")
        self.addCleanup(other.transport.close)
        aggregate = uuid4()
        one.insert_events([self.event(aggregate, 1)])
        # Both know version 1; the first to record version 2 wins, the second gets IntegrityError.
        self.assertEqual(len(other.select_events(aggregate)), 1)
        one.insert_events([self.event(aggregate, 2)])
        with self.assertRaises(IntegrityError):
            other.insert_events([self.event(aggregate, 2, b'{"a":2}')])
        # A later version than any recorded is not a conflict, as on a database table.
        other.insert_events([self.event(aggregate, 3)])
        self.assertEqual([e.originator_version for e in one.select_events(aggregate)], [1, 2, 3])

    def test_states_round_trip(self) -> None:
        from uuid import uuid4

        recorder = LetheApplicationRecorder(self.transport, "app-")
        aggregate = uuid4()
        states = [
            b'{"name":"\xc3\xa9t\xc3\xa9","n":18446744073709551615,"f":0.1,"l":[1,{"x":null}]}',
            b"\x00\xffnot json",
            b'"a json string"',
            b'{"big":123456789012345678901234567890}',
        ]
        recorder.insert_events([self.event(aggregate, v, s) for v, s in enumerate(states, start=1)])
        read = [e.state for e in recorder.select_events(aggregate)]
        # A JSON object comes back as the same object (Lethe may order its members anew).
        self.assertEqual(json.loads(read[0]), json.loads(states[0]))
        self.assertEqual(read[1:], states[1:])
        # An object travels as JSON, so Lethe's schemas and personal fields can see its fields.
        page = self.transport.request("GET", path("streams", f"app-{aggregate}")).body
        self.assertEqual(page["events"][0]["data"]["name"], "été")
        self.assertIsInstance(page["events"][1]["data"], str)

    def test_other_streams_are_not_notifications(self) -> None:
        from uuid import uuid4

        mine = LetheApplicationRecorder(self.transport, "mine-")
        theirs = LetheApplicationRecorder(self.transport, "theirs-")
        theirs.insert_events([self.event(uuid4(), 1)])
        ids = mine.insert_events([self.event(uuid4(), 1)])
        theirs.insert_events([self.event(uuid4(), 1)])
        self.assertEqual(ids, [2])
        self.assertEqual([n.id for n in mine.select_notifications(None, 10)], [2])
        self.assertEqual(mine.max_notification_id(), 2)
        self.assertEqual(theirs.max_notification_id(), 3)

    def test_several_aggregates_are_recorded_atomically(self) -> None:
        from uuid import uuid4

        recorder = LetheApplicationRecorder(self.transport, "app-")
        first, second = uuid4(), uuid4()
        recorder.insert_events([self.event(second, 1)])
        ids = recorder.insert_events([self.event(first, 1), self.event(second, 2), self.event(first, 2)])
        self.assertEqual(sorted(ids), [2, 3, 4])
        # One conflicting aggregate rejects the whole insert.
        with self.assertRaises(IntegrityError):
            recorder.insert_events([self.event(first, 3), self.event(second, 2)])
        self.assertEqual([e.originator_version for e in recorder.select_events(first)], [1, 2])

    def test_a_forgotten_subjects_aggregate_is_gone(self) -> None:
        from uuid import uuid4

        recorder = LetheApplicationRecorder(self.transport, "app-")
        snapshots = LetheAggregateRecorder(self.transport, "app.snapshots-", subject_source=recorder)
        user, account = uuid4(), uuid4()
        recorder.insert_events([self.event(user, 1), self.event(account, 1)], subjects={user: "subject-1"})
        snapshots.insert_events([self.event(user, 1)])
        stream = self.transport.request("GET", path("streams", f"app.snapshots-{user}")).body
        self.assertEqual(stream["subject"], "subject-1")

        self.transport.request(
            "POST",
            path("admin", "subjects", "subject-1", "forget"),
            body={"reason": "Art. 17", "requested_by": "dpo"},
            ok=(202,),
            retry=False,
        )
        fresh = LetheApplicationRecorder(self.transport, "app-")
        self.assertEqual(fresh.select_events(user), [])
        self.assertEqual(snapshots.select_events(user), [])
        self.assertEqual(len(fresh.select_events(account)), 1)
        self.assertEqual([n.originator_id for n in fresh.select_notifications(None, 10)], [account])
        with self.assertRaises(StreamErasedError) as refused:
            fresh.insert_events([self.event(user, 2)])
        self.assertEqual(refused.exception.code, "stream_erased")

    def test_server_errors_keep_their_code(self) -> None:
        from uuid import uuid4

        recorder = LetheApplicationRecorder(self.transport, "bad name ")
        with self.assertRaises(LetheProgrammingError) as bad:
            recorder.insert_events([self.event(uuid4(), 1)])
        self.assertEqual(bad.exception.code, "invalid_stream_name")
        self.assertEqual(bad.exception.status, 400)


    def test_text_originator_ids(self) -> None:
        recorder = LetheApplicationRecorder(self.transport, "orders-", originator_id_type="text")
        recorder.insert_events([self.event("order-7", 1)])
        self.assertEqual(recorder.select_events("order-7")[0].originator_id, "order-7")
        self.assertEqual(recorder.select_notifications(None, 10)[0].originator_id, "order-7")

    def test_a_refused_token_is_an_operational_error(self) -> None:
        from uuid import uuid4

        transport = Transport(self.server.url, "not-a-token")
        self.addCleanup(transport.close)
        with self.assertRaises(OperationalError) as refused:
            LetheApplicationRecorder(transport, "app-").insert_events([self.event(uuid4(), 1)])
        self.assertEqual(refused.exception.code, "unauthorized")
        self.assertEqual(refused.exception.status, 401)

    def test_an_unreachable_server_is_an_operational_error_after_the_retries(self) -> None:
        import socket
        from uuid import uuid4

        from lethe_eventsourcing import _http

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        transport = Transport(f"http://127.0.0.1:{port}", "t")
        self.addCleanup(transport.close)
        first, _http.BACKOFF_FIRST = _http.BACKOFF_FIRST, 0.001
        self.addCleanup(setattr, _http, "BACKOFF_FIRST", first)
        with self.assertRaises(LetheOperationalError) as unreachable:
            LetheApplicationRecorder(transport, "app-").select_events(uuid4())
        self.assertEqual(unreachable.exception.code, "unreachable")


# The library's abstract cases are not tests of their own.
del AggregateRecorderTestCase, ApplicationRecorderTestCase
