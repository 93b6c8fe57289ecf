"""A subscription to an application's notifications over Lethe's Server-Sent Events.

A background thread reads `/subscribe` and hands notifications to the iterator through a
bounded queue. When the connection drops, or the server ends the stream after a failure, the
thread reconnects with `Last-Event-ID` set to the last position it received — also for events
it skipped (other applications', erased ones) — so nothing is skipped or repeated.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import Notification, Subscription

from ._http import EventSource, LetheOperationalError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .recorders import LetheApplicationRecorder

#: Pause before reconnecting, in seconds, doubled up to `RECONNECT_MAX` while it keeps failing.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0
#: Notifications read ahead of the iterator.
QUEUE_SIZE = 1_000

_STOPPED = object()


class LetheSubscription(Subscription["LetheApplicationRecorder"]):
    def __init__(
        self,
        recorder: LetheApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._source: EventSource | None = None
        self._source_lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lethe-subscription", daemon=True)
        self._thread.start()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            self._thread.join(timeout=5)

    def stop(self) -> None:
        super().stop()
        with self._source_lock:
            source = self._source
        if source is not None:
            source.close()
        # Wakes an iterator waiting for the next notification.
        try:
            self._queue.put_nowait(_STOPPED)
        except queue.Full:
            pass

    def __next__(self) -> Notification:
        while not self._has_been_stopped:
            item = self._queue.get()
            if item is _STOPPED:
                break
            return item
        if self._error is not None:
            raise self._error
        raise StopIteration

    # -- the reader thread ----------------------------------------------------------------

    def _run(self) -> None:
        recorder = self._recorder
        last = self._last_notification_id
        query = recorder.log_query(self._topics)
        query["from"] = (last or 0) + 1
        wanted = set(self._topics)
        pause = RECONNECT_FIRST
        try:
            while not self._has_been_stopped:
                try:
                    source = EventSource(recorder.transport, "/subscribe", query, last)
                except LetheOperationalError as e:
                    if e.status in (401, 403):
                        raise
                    # Unreachable, overloaded or restarting: try again.
                    time.sleep(pause * (0.5 + random.random()))
                    pause = min(pause * 2, RECONNECT_MAX)
                    continue
                with self._source_lock:
                    self._source = source
                if self._has_been_stopped:
                    source.close()
                    break
                try:
                    for kind, event_id, data in source.events():
                        if kind == "error":
                            # The server ends the stream after a failure; resume after `last`.
                            break
                        event = json.loads(data)
                        last = int(event_id) if event_id is not None else event["position"]
                        pause = RECONNECT_FIRST
                        notification = recorder.notification_of(event)
                        if notification is None or (wanted and notification.topic not in wanted):
                            continue
                        self._put(notification)
                        if self._has_been_stopped:
                            break
                except (OSError, ValueError, AttributeError, http.client.HTTPException):
                    # A dropped connection (or, from `stop`, one closed under the read; the
                    # standard library then fails in odd ways): reconnect from `last`.
                    pass
                finally:
                    source.close()
                    with self._source_lock:
                        self._source = None
                if not self._has_been_stopped:
                    time.sleep(pause * (0.5 + random.random()))
                    pause = min(pause * 2, RECONNECT_MAX)
        except BaseException as e:  # noqa: BLE001
            # Refused (a bad filter, a revoked token) or broken: the iterating thread raises it.
            if not self._has_been_stopped:
                self._error = e
                self.stop()

    def _put(self, notification: Notification) -> None:
        while not self._has_been_stopped:
            try:
                self._queue.put(notification, timeout=0.2)
                return
            except queue.Full:
                continue
