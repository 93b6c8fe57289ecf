"""Declaring an event class's personal fields in Lethe's schema registry.

An event's `data` is its state as the library's JSON transcoder writes it, so a field `name` of
an event is at the JSON pointer `/name`, and Lethe can encrypt it with the key of the subject
whose id is in another field of the same event (`/user_id`), or of the stream's bound subject
(`$stream`). Forgetting that subject then erases the field and leaves the rest of the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventsourcing.persistence import ProgrammingError
from eventsourcing.utils import get_topic

from ._http import Transport, path


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def personal_fields_schema(fields: Mapping[str, str], erased: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON Schema marking each `field pointer → subject pointer` of `fields` as personal
    data (`x-lethe-personal`), with the replacement value of `erased` where given."""
    root: dict[str, Any] = {"type": "object"}
    for field, subject in fields.items():
        if not field.startswith("/") or field == "/":
            msg = f"a personal field is a JSON pointer into the event's state like '/name', not {field!r}"
            raise ProgrammingError(msg)
        node = root
        tokens = [_unescape(t) for t in field[1:].split("/")]
        for token in tokens:
            node = node.setdefault("properties", {}).setdefault(token, {})
        node["x-lethe-personal"] = {"subject": subject}
        if erased and field in erased:
            node["x-lethe-erased"] = erased[field]
    return root


def declare_personal_fields(
    app: Any,
    event_class: type | str,
    fields: Mapping[str, str],
    *,
    token: str | None = None,
    erased: Mapping[str, Any] | None = None,
    mode: str = "warn",
) -> int:
    """Registers the next version of the schema of `event_class`'s type (its topic) in the
    Lethe server `app` records to, marking `fields` as personal: each key is a JSON pointer into
    the event's state, each value the pointer to the subject's id in the same event, or
    `"$stream"` for the subject of the aggregate's stream. Schemas are an admin operation:
    `token` is an admin token when the application's own is not one. Returns the schema's
    version.

        declare_personal_fields(app, Transfer.Made, {"/sender_name": "/sender_id"}, token=admin)
    """
    topic = event_class if isinstance(event_class, str) else get_topic(event_class)
    transport: Transport = app.factory.transport
    if token is not None:
        transport = transport.with_token(token)
    body = {"schema": personal_fields_schema(fields, erased), "mode": mode}
    # Registering twice makes two versions, so this request is never repeated blindly.
    answer = transport.request("PUT", path("schemas", topic), body=body, ok=(200, 201), retry=False)
    return int(answer.body.get("version", 0)) if isinstance(answer.body, dict) else 0
