"""Lethe as a persistence module of the Python `eventsourcing` library.

Choose it with `PERSISTENCE_MODULE=lethe_eventsourcing` and point it at a server with
`LETHE_URL` and `LETHE_TOKEN` (a `writer` token records; a `reader` token only reads). Each
aggregate is the stream `<prefix><aggregate id>`; see README.md for every setting.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    NotSupportedError,
    ProcessRecorder,
    ProgrammingError,
    TrackingRecorder,
)

from ._http import (
    LetheError,
    LetheIntegrityError,
    LetheOperationalError,
    LetheProgrammingError,
    StreamErasedError,
    Transport,
)
from .recorders import LetheAggregateRecorder, LetheApplicationRecorder
from .schemas import declare_personal_fields
from .subscription import LetheSubscription

__all__ = [
    "Factory",
    "LetheAggregateRecorder",
    "LetheApplicationRecorder",
    "LetheError",
    "LetheIntegrityError",
    "LetheOperationalError",
    "LetheProgrammingError",
    "LetheSubscription",
    "StreamErasedError",
    "declare_personal_fields",
]


class Factory(InfrastructureFactory[TrackingRecorder]):
    """Builds the recorders from the application's environment.

    - `LETHE_URL` (default `http://127.0.0.1:2113`) and `LETHE_TOKEN`;
    - `LETHE_STREAM_PREFIX`: the application's streams start with it (default
      `<application name>-`); its notifications are the events of those streams;
    - `LETHE_SNAPSHOT_STREAM_PREFIX`: snapshots' streams (default
      `<application name>.snapshots-`); it must not start with the stream prefix;
    - `ORIGINATOR_ID_TYPE`: `uuid` (default) or `text`, as for the library's own modules;
    - `LETHE_TIMEOUT`: seconds to wait for an answer (default 30).

    Like every setting of the library, each may be prefixed with the application's name in
    upper case (`BANKACCOUNTS_LETHE_URL`).
    """

    LETHE_URL = "LETHE_URL"
    LETHE_TOKEN = "LETHE_TOKEN"
    LETHE_STREAM_PREFIX = "LETHE_STREAM_PREFIX"
    LETHE_SNAPSHOT_STREAM_PREFIX = "LETHE_SNAPSHOT_STREAM_PREFIX"
    LETHE_TIMEOUT = "LETHE_TIMEOUT"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"

    def __init__(self, env: Any):
        super().__init__(env)
        url = self.env.get(self.LETHE_URL) or "http://127.0.0.1:2113"
        token = self.env.get(self.LETHE_TOKEN) or None
        timeout_text = self.env.get(self.LETHE_TIMEOUT) or "30"
        try:
            timeout = float(timeout_text)
        except ValueError:
            msg = f"{self.LETHE_TIMEOUT} must be a number of seconds, not {timeout_text!r}"
            raise ProgrammingError(msg) from None
        self.transport = Transport(url, token, timeout)
        name = self.env.name or "eventsourcing"
        self.stream_prefix = self.env.get(self.LETHE_STREAM_PREFIX) or f"{name}-"
        self.snapshot_prefix = self.env.get(self.LETHE_SNAPSHOT_STREAM_PREFIX) or f"{name}.snapshots-"
        if self.snapshot_prefix.startswith(self.stream_prefix):
            msg = (
                f"{self.LETHE_SNAPSHOT_STREAM_PREFIX} {self.snapshot_prefix!r} starts with "
                f"{self.LETHE_STREAM_PREFIX} {self.stream_prefix!r}: snapshots would read as events"
            )
            raise ProgrammingError(msg)
        self.originator_id_type = (self.env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower()
        self._events_recorder: LetheAggregateRecorder | None = None

    def _events(self) -> LetheApplicationRecorder:
        recorder = LetheApplicationRecorder(
            self.transport, self.stream_prefix, originator_id_type=self.originator_id_type
        )
        self._events_recorder = recorder
        return recorder

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose == "snapshots":
            # A snapshot holds the aggregate's personal data: its stream is bound to the
            # subject of the aggregate's own stream, so forgetting the subject shreds both.
            source = self._events_recorder or LetheAggregateRecorder(
                self.transport, self.stream_prefix, originator_id_type=self.originator_id_type
            )
            return LetheAggregateRecorder(
                self.transport,
                self.snapshot_prefix,
                originator_id_type=self.originator_id_type,
                subject_source=source,
            )
        return self._events()

    def application_recorder(self) -> ApplicationRecorder:
        return self._events()

    def tracking_recorder(self, tracking_recorder_class: type[TrackingRecorder] | None = None) -> TrackingRecorder:
        msg = (
            "Lethe records events, not tracking: keep a projection's or process's tracking "
            "records in its own database (another PERSISTENCE_MODULE for the view) and follow "
            "the application with a subscription"
        )
        raise NotSupportedError(msg)

    def process_recorder(self) -> ProcessRecorder:
        return self.tracking_recorder()  # type: ignore[return-value]

    def close(self) -> None:
        self.transport.close()
