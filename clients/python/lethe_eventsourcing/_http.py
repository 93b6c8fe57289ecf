"""The HTTP transport: one keep-alive connection per thread, retries where they are safe, and
Lethe's problem+json errors turned into the `eventsourcing` library's exception types.

Only the standard library: the persistence module depends on `eventsourcing` and nothing else.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    ProgrammingError,
)

#: Attempts of a request that may be repeated (reads, and appends: their event ids make a
#: repeated append a no-op) when the connection fails or the server answers 503.
ATTEMPTS = 6
#: First pause between attempts, in seconds; doubled each time, with jitter (about 3 s in all).
BACKOFF_FIRST = 0.1
#: Seconds to wait for an answer (connect and each read); subscriptions read without one.
TIMEOUT = 30.0


class LetheError:
    """Mixed into every exception this module raises for an answer of the server.

    `code` is the stable error code of Lethe's problem+json (`wrong_expected_version`,
    `stream_erased`, `unauthorized`, …), `status` the HTTP status (0: no answer)."""

    code: str
    status: int

    def _init_lethe(self, code: str, status: int) -> None:
        self.code = code
        self.status = status


class LetheIntegrityError(IntegrityError, LetheError):
    """A version conflict: the aggregate already has an event at one of the versions given."""

    def __init__(self, message: str, code: str = "wrong_expected_version", status: int = 409):
        super().__init__(message)
        self._init_lethe(code, status)


class LetheProgrammingError(ProgrammingError, LetheError):
    """A request the server refused as it stands (400, 404, 409 other than a version
    conflict, 410, 413): repeating it cannot succeed."""

    def __init__(self, message: str, code: str, status: int):
        super().__init__(message)
        self._init_lethe(code, status)


class StreamErasedError(LetheProgrammingError):
    """The aggregate's stream was shredded (`stream_erased`: its subject was forgotten) or
    deleted (`stream_deleted`): nothing can be appended to it again."""


class LetheOperationalError(OperationalError, LetheError):
    """No usable answer: the server is unreachable, overloaded or failing (5xx), or refused
    the token (401, 403)."""

    def __init__(self, message: str, code: str, status: int):
        super().__init__(message)
        self._init_lethe(code, status)


def error_for(status: int, problem: dict[str, Any]) -> Exception:
    """The exception for an answer with `status` and its problem+json body."""
    code = str(problem.get("code") or f"http_{status}")
    detail = str(problem.get("detail") or problem.get("title") or "")
    message = f"{code}: {detail}" if detail else code
    if code == "wrong_expected_version":
        return LetheIntegrityError(message, code, status)
    if code in ("stream_erased", "stream_deleted"):
        return StreamErasedError(message, code, status)
    if status in (401, 403) or status >= 500:
        return LetheOperationalError(message, code, status)
    return LetheProgrammingError(message, code, status)


def path(*segments: str) -> str:
    """A URL path of percent-encoded segments."""
    return "/" + "/".join(quote(s, safe="") for s in segments)


class Response:
    __slots__ = ("status", "body")

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body


class Transport:
    """Requests to one Lethe server with one bearer token."""

    def __init__(self, url: str, token: str | None, timeout: float = TIMEOUT):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"LETHE_URL must be an http:// or https:// URL, not {url!r}"
            raise ProgrammingError(msg)
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._local = threading.local()
        # Every thread's connection, so that `close` closes them all.
        self._connections: set[http.client.HTTPConnection] = set()
        self._connections_lock = threading.Lock()

    def with_token(self, token: str | None) -> Transport:
        """A transport to the same server with another token (an admin's, say)."""
        scheme = "https" if self.https else "http"
        return Transport(f"{scheme}://{self.host}:{self.port}{self.base}", token, self.timeout)

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if extra:
            headers.update(extra)
        return headers

    def target(self, route: str, query: dict[str, Any] | None = None) -> str:
        target = self.base + route
        if query:
            pairs = {k: v for k, v in query.items() if v is not None}
            if pairs:
                target += "?" + urlencode(pairs)
        return target

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect(self.timeout)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.add(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._connections_lock:
                self._connections.discard(conn)
            conn.close()

    def request(
        self,
        method: str,
        route: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (200,),
        retry: bool = True,
    ) -> Response:
        """Sends one request and returns the answer if its status is in `ok`; raises the
        matching exception otherwise. With `retry`, a failed connection or a 503 is tried
        again after a pause (the caller vouches that repeating the request is harmless)."""
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = self.headers({"Content-Type": "application/json"} if payload is not None else None)
        target = self.target(route, query)
        pause = BACKOFF_FIRST
        attempts = ATTEMPTS if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                conn = self._connection()
                conn.request(method, target, body=payload, headers=headers)
                answer = conn.getresponse()
                raw = answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException) as e:
                self._drop_connection()
                if attempt == attempts:
                    msg = f"Lethe at {self.host}:{self.port} is unreachable: {type(e).__name__}: {e}"
                    raise LetheOperationalError(msg, "unreachable", 0) from e
            else:
                parsed = _json(raw)
                if status in ok:
                    return Response(status, parsed)
                if status != 503 or attempt == attempts:
                    raise error_for(status, parsed if isinstance(parsed, dict) else {})
            time.sleep(pause * (0.5 + random.random()))
            pause *= 2
        msg = "unreachable"  # pragma: no cover (the loop returns or raises)
        raise LetheOperationalError(msg, msg, 0)

    def close(self) -> None:
        """Closes every thread's connection; a later request opens a new one."""
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            conn.close()
        self._local = threading.local()


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class EventSource:
    """One Server-Sent Events response, read line by line; `close` (from any thread) ends a
    read that is blocked waiting for the next line."""

    def __init__(self, transport: Transport, route: str, query: dict[str, Any], last_event_id: int | None):
        extra = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            extra["Last-Event-ID"] = str(last_event_id)
        # No timeout: a live subscription may wait for hours; keep-alive comments arrive
        # every 15 s, and `close` interrupts the wait.
        self._conn = transport.connect(None)
        self._closed = False
        try:
            self._conn.request("GET", transport.target(route, query), headers=transport.headers(extra))
            self._response = self._conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            msg = f"Lethe at {transport.host}:{transport.port} is unreachable: {type(e).__name__}: {e}"
            raise LetheOperationalError(msg, "unreachable", 0) from e
        if self._response.status != 200:
            parsed = _json(self._response.read())
            self._conn.close()
            raise error_for(self._response.status, parsed if isinstance(parsed, dict) else {})

    def events(self):
        """Yields `(event, id, data)` for each event of the stream until it ends."""
        event, event_id, data = "message", None, []
        while True:
            line = self._response.readline()
            if not line:
                return
            text = line.decode("utf-8").rstrip("\r\n")
            if not text:
                if data:
                    yield event, event_id, "\n".join(data)
                event, event_id, data = "message", None, []
                continue
            if text.startswith(":"):
                continue
            field, _, value = text.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            elif field == "event":
                event = value

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sock = getattr(self._conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conn.close()
