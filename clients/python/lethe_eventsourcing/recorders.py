"""Aggregate and application recorders of the `eventsourcing` library on Lethe's HTTP API.

How a stored event maps to a Lethe event:

- the aggregate's sequence is the stream `<prefix><originator id>`;
- `topic` is the event's `type`;
- `state` is its `data`: the JSON object itself when the state is one (what the library's
  JSON transcoder writes), so that Lethe's schemas and personal fields apply to it; otherwise
  (a cipher or compressor in the mapper) the bytes, base64-encoded, flagged in `metadata`;
- `originator_version` is kept in `metadata`: Lethe numbers a stream's events 0, 1, 2, … while
  an aggregate may start at any version and a snapshot sequence has gaps;
- a notification id is the event's position in Lethe's global log.

An insert appends with `expected_version` set to the stream's last Lethe version (known from
the last read or insert, or read first), so two writers of one aggregate conflict as they
would on a database table; the versions of one aggregate must ascend. Every append carries
event ids drawn once per insert, so the transport may repeat it after a lost answer.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Notification,
    ProgrammingError,
    StoredEvent,
)

from ._http import LetheIntegrityError, LetheProgrammingError, Transport, path
from .subscription import LetheSubscription

#: Events per read (Lethe's page limit).
PAGE = 1_000
#: Conflicting appends an insert retries after re-reading the streams (another writer added
#: other versions in between) before it gives up with `IntegrityError`.
CONFLICT_RETRIES = 5
#: Streams whose last version a recorder remembers.
TAIL_CACHE = 10_000
#: `metadata` member holding the aggregate version.
VERSION_KEY = "originator_version"
#: `metadata` member set when `data` holds the state's bytes in base64 (not JSON).
ENCODING_KEY = "state_encoding"
#: Types that only Lethe writes (tombstones) start with this.
SYSTEM_PREFIX = "$"

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def _lossless(value: Any) -> bool:
    """Whether Lethe stores `value` (from `json.loads`) exactly: 64-bit integers, finite
    floats and strings that are valid Unicode."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return _INT_MIN <= value <= _INT_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_lossless(v) for v in value)
    if isinstance(value, dict):
        return all(_lossless(k) and _lossless(v) for k, v in value.items())
    return False


def encode_state(state: bytes) -> tuple[Any, dict[str, Any]]:
    """`(data, metadata members)` for a stored event's state."""
    try:
        value = json.loads(state.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        value = None
    if isinstance(value, dict) and _lossless(value):
        return value, {}
    return base64.b64encode(state).decode("ascii"), {ENCODING_KEY: "base64"}


def decode_state(data: Any, metadata: Mapping[str, Any]) -> bytes:
    """The state bytes of a Lethe event written by `encode_state`."""
    if metadata.get(ENCODING_KEY) == "base64":
        return base64.b64decode(data)
    # The library's JSON transcoder writes this form; key order may differ from the original.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Tail:
    """What a recorder knows of a stream's end: Lethe's last version, the aggregate's last
    version, and the subject the stream is bound to."""

    __slots__ = ("lethe_version", "originator_version", "subject")

    def __init__(self, lethe_version: int | None, originator_version: int | None, subject: str | None):
        self.lethe_version = lethe_version
        self.originator_version = originator_version
        self.subject = subject


class LetheAggregateRecorder(AggregateRecorder):
    """Stores each aggregate's events in the stream `<prefix><originator id>`.

    `insert_events` takes, besides the library's own keyword arguments, `subjects`: a mapping
    from originator ids to the data subject each one's stream is bound to at its first event
    (`app.save(user, subjects={user.id: "user-456"})`). Forgetting that subject shreds the
    stream; the aggregate then reads as not found, and appending to it raises
    `StreamErasedError`.
    """

    def __init__(
        self,
        transport: Transport,
        prefix: str = "",
        *,
        originator_id_type: str = "uuid",
        subject_source: LetheAggregateRecorder | None = None,
    ):
        if originator_id_type not in ("uuid", "text"):
            msg = f"ORIGINATOR_ID_TYPE must be 'uuid' or 'text', not {originator_id_type!r}"
            raise ProgrammingError(msg)
        self.transport = transport
        self.prefix = prefix
        self.originator_id_type = originator_id_type
        # The snapshot recorder binds a snapshot's stream to the subject of its aggregate's
        # event stream, read from this recorder: a snapshot holds the same personal data.
        self.subject_source = subject_source
        self._tails: OrderedDict[str, _Tail] = OrderedDict()
        self._tails_lock = threading.Lock()

    # -- names ----------------------------------------------------------------------------

    def stream_of(self, originator_id: UUID | str) -> str:
        return f"{self.prefix}{originator_id}"

    def originator_of(self, stream: str) -> UUID | str:
        suffix = stream[len(self.prefix) :]
        if self.originator_id_type == "uuid":
            try:
                return UUID(suffix)
            except ValueError:
                return suffix
        return suffix

    # -- the tail cache -------------------------------------------------------------------

    def _remember(self, stream: str, tail: _Tail) -> None:
        with self._tails_lock:
            self._tails[stream] = tail
            self._tails.move_to_end(stream)
            while len(self._tails) > TAIL_CACHE:
                self._tails.popitem(last=False)

    def _forget_tail(self, stream: str) -> None:
        with self._tails_lock:
            self._tails.pop(stream, None)

    def _cached_tail(self, stream: str) -> _Tail | None:
        with self._tails_lock:
            return self._tails.get(stream)

    def _read_tail(self, stream: str) -> _Tail:
        """Reads the stream's last event (one request; more only if that event was not written
        by a recorder). A shredded or deleted stream has no tail to append after."""
        page = self._read_page(stream, None, 1, backward=True)
        if page is None:
            tail = _Tail(None, None, None)
        elif page.get("status") != "active":
            tail = _Tail(None, None, page.get("subject"))
        else:
            last = None
            if page["events"]:
                metadata = page["events"][-1].get("metadata")
                last = metadata.get(VERSION_KEY) if isinstance(metadata, dict) else None
                if not isinstance(last, int):
                    last = self._last_originator_version(stream)
            tail = _Tail(page.get("version"), last, page.get("subject"))
        self._remember(stream, tail)
        return tail

    def _last_originator_version(self, stream: str) -> int | None:
        for event in self._events(stream, backward=True):
            metadata = event.get("metadata")
            version = metadata.get(VERSION_KEY) if isinstance(metadata, dict) else None
            if isinstance(version, int):
                return version
        return None

    def tail(self, stream: str) -> _Tail:
        return self._cached_tail(stream) or self._read_tail(stream)

    def subject_of(self, originator_id: UUID | str) -> str | None:
        """The subject the aggregate's stream is bound to, if any, as the server says now (a
        snapshot left unbound by a stale answer would outlive its subject's erasure)."""
        return self._read_tail(self.stream_of(originator_id)).subject

    # -- reads ----------------------------------------------------------------------------

    def _read_page(self, stream: str, start: int | None, limit: int, *, backward: bool) -> dict[str, Any] | None:
        """One page of the stream; None if it has no events."""
        try:
            answer = self.transport.request(
                "GET",
                path("streams", stream),
                query={"from": start, "limit": limit, "direction": "backward" if backward else "forward"},
            )
        except LetheProgrammingError as e:
            if e.code == "not_found":
                return None
            raise
        return answer.body

    def _events(self, stream: str, *, backward: bool):
        """Every event of the stream, page by page, newest first if `backward`."""
        start: int | None = None
        while True:
            page = self._read_page(stream, start, PAGE, backward=backward)
            if page is None or page.get("status") != "active":
                return
            events = page["events"]
            yield from events
            if len(events) < PAGE:
                return
            last = events[-1]["version"]
            if backward:
                if last == 0:
                    return
                start = last - 1
            else:
                start = last + 1

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        stream = self.stream_of(originator_id)
        results: list[StoredEvent] = []
        if limit is not None and limit <= 0:
            return results
        for event in self._events(stream, backward=desc):
            stored = self._stored_event(originator_id, event)
            if stored is None:
                continue
            version = stored.originator_version
            # Versions ascend with Lethe's, so a page past the bound ends the read.
            if desc and gt is not None and version <= gt:
                break
            if not desc and lte is not None and version > lte:
                break
            if (gt is not None and version <= gt) or (lte is not None and version > lte):
                continue
            results.append(stored)
            if limit is not None and len(results) >= limit:
                break
        return results

    def _stored_event(self, originator_id: UUID | str, event: dict[str, Any]) -> StoredEvent | None:
        metadata = event.get("metadata")
        if event.get("erased") or not isinstance(metadata, dict):
            return None
        version = metadata.get(VERSION_KEY)
        if not isinstance(version, int) or event["type"].startswith(SYSTEM_PREFIX):
            return None
        return StoredEvent(
            originator_id=originator_id,
            originator_version=version,
            topic=event["type"],
            state=decode_state(event["data"], metadata),
        )

    # -- inserts --------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._insert(stored_events, kwargs.get("subjects"))
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], subjects: Mapping[Any, str] | None) -> list[int]:
        if not stored_events:
            return []
        # Group by aggregate, keeping the order of first appearance.
        groups: OrderedDict[str, list[tuple[int, StoredEvent]]] = OrderedDict()
        for index, event in enumerate(stored_events):
            groups.setdefault(self.stream_of(event.originator_id), []).append((index, event))
        for stream, events in groups.items():
            versions = [e.originator_version for _, e in events]
            if any(b <= a for a, b in zip(versions, versions[1:])):
                msg = f"stored events of {stream} are not in ascending, unique versions: {versions}"
                raise LetheIntegrityError(msg, "duplicate_version", 0)

        # Drawn once: a repeated request (lost answer) is then recognised as the same append.
        ids = [str(uuid.uuid4()) for _ in stored_events]
        appends = []
        for stream, events in groups.items():
            subject = self._subject_for(events[0][1].originator_id, subjects)
            appends.append(
                {
                    "stream": stream,
                    "subject": subject,
                    "events": [self._event_in(ids[i], e) for i, e in events],
                }
            )

        tails: list[_Tail] = []
        for attempt in range(CONFLICT_RETRIES + 1):
            fresh = attempt > 0
            tails = []
            for append, events in zip(appends, groups.values()):
                tail = self._read_tail(append["stream"]) if fresh else self.tail(append["stream"])
                tails.append(tail)
                first = events[0][1].originator_version
                if tail.originator_version is not None and first <= tail.originator_version:
                    msg = (
                        f"{append['stream']} already has version {tail.originator_version}; "
                        f"cannot insert version {first}"
                    )
                    raise LetheIntegrityError(msg)
                append["expected_version"] = "no_stream" if tail.lethe_version is None else tail.lethe_version
            try:
                positions = self._append(appends)
            except LetheIntegrityError:
                for append in appends:
                    self._forget_tail(append["stream"])
                if attempt == CONFLICT_RETRIES:
                    raise
                continue
            break

        # Positions in the order the events were given.
        result = [0] * len(stored_events)
        for append, events, tail, (first_version, first_position) in zip(
            appends, groups.values(), tails, positions
        ):
            for offset, (index, _) in enumerate(events):
                result[index] = first_position + offset
            last = events[-1][1]
            subject = append["subject"] or tail.subject
            self._remember(append["stream"], _Tail(first_version + len(events) - 1, last.originator_version, subject))
        return result

    def _subject_for(self, originator_id: UUID | str, subjects: Mapping[Any, str] | None) -> str | None:
        if subjects:
            subject = subjects.get(originator_id)
            if subject is None:
                subject = subjects.get(str(originator_id))
            if subject is not None:
                return subject
        if self.subject_source is not None:
            return self.subject_source.subject_of(originator_id)
        return None

    @staticmethod
    def _event_in(event_id: str, event: StoredEvent) -> dict[str, Any]:
        data, extra = encode_state(event.state)
        metadata = {VERSION_KEY: event.originator_version, **extra}
        return {"id": event_id, "type": event.topic, "data": data, "metadata": metadata}

    def _append(self, appends: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Appends atomically; `(first Lethe version, first position)` per stream."""
        def body_of(append: dict[str, Any]) -> dict[str, Any]:
            body = {"expected_version": append["expected_version"], "events": append["events"]}
            if append["subject"] is not None:
                body["subject"] = append["subject"]
            return body

        if len(appends) == 1:
            append = appends[0]
            answer = self.transport.request(
                "POST", path("streams", append["stream"]), body=body_of(append), ok=(200, 201)
            )
            results = [answer.body]
        else:
            answer = self.transport.request(
                "POST",
                "/streams",
                body={"appends": [{"stream": a["stream"], **body_of(a)} for a in appends]},
                ok=(200, 201),
            )
            results = answer.body["appends"]
        return [(r["first_version"], r["first_position"]) for r in results]


class LetheApplicationRecorder(LetheAggregateRecorder, ApplicationRecorder):
    """Adds the application sequence: notification ids are positions in Lethe's log, and an
    application sees the events of its own streams (those starting with its prefix). Erased
    events and Lethe's tombstones are not notifications."""

    def __init__(self, transport: Transport, prefix: str = "", **kwargs: Any):
        super().__init__(transport, prefix, **kwargs)
        # The highest position of this application's events seen so far, and the log head it
        # was read at: `max_notification_id` scans only what was committed since.
        self._max_lock = threading.Lock()
        self._max_seen: int | None = None
        self._max_scanned = 0

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, kwargs.get("subjects"))

    def notification_of(self, event: dict[str, Any]) -> Notification | None:
        """The notification for a log event of this application; None for others."""
        if not event["stream"].startswith(self.prefix) or event["stream"].startswith(SYSTEM_PREFIX):
            return None
        originator_id = self.originator_of(event["stream"])
        stored = self._stored_event(originator_id, event)
        if stored is None:
            return None
        return Notification(
            id=event["position"],
            originator_id=stored.originator_id,
            originator_version=stored.originator_version,
            topic=stored.topic,
            state=stored.state,
        )

    def log_query(self, topics: Sequence[str]) -> dict[str, Any]:
        """The `stream_prefix`/`types` filter of `/log` and `/subscribe` (types that the
        server's comma-separated list cannot carry are filtered here instead)."""
        query: dict[str, Any] = {}
        if self.prefix:
            query["stream_prefix"] = self.prefix
        if topics and len(topics) <= 100 and not any("," in t or t != t.strip() for t in topics):
            query["types"] = ",".join(topics)
        return query

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        if start is None:
            position = 1
        else:
            position = start if inclusive_of_start else start + 1
        position = max(position, 1)
        wanted = set(topics)
        results: list[Notification] = []
        query = self.log_query(topics)
        while len(results) < limit and (stop is None or position <= stop):
            page = self.transport.request(
                "GET", "/log", query={**query, "from": position, "limit": min(PAGE, max(limit - len(results), 1))}
            ).body
            for event in page["events"]:
                if stop is not None and event["position"] > stop:
                    return results
                notification = self.notification_of(event)
                if notification is None or (wanted and notification.topic not in wanted):
                    continue
                results.append(notification)
                if len(results) >= limit:
                    return results
            if page["next"] <= position or page["next"] > page["head"]:
                break
            position = page["next"]
        return results

    def max_notification_id(self) -> int | None:
        with self._max_lock:
            position = self._max_scanned + 1
            query = self.log_query(())
            while True:
                page = self.transport.request("GET", "/log", query={**query, "from": position, "limit": PAGE}).body
                for event in page["events"]:
                    if self.notification_of(event) is not None:
                        self._max_seen = event["position"]
                self._max_scanned = max(self._max_scanned, min(page["next"] - 1, page["head"]))
                if page["next"] <= position or page["next"] > page["head"]:
                    break
                position = page["next"]
            return self._max_seen

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> LetheSubscription:
        return LetheSubscription(self, gt=gt, topics=topics)
