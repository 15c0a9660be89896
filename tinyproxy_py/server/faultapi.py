"""The fault rules' JSON endpoint on the stats host, for test suites not written in
Python (docs/faults.md): GET /faults lists the rules, POST /faults adds one, DELETE
/faults/ID removes one and DELETE /faults every one. The handler checks access first,
as for the stats pages."""

from __future__ import annotations

import json
from typing import Any

from ..settings.faults import FaultError, Faults, from_json

MAX_BODY = 16 * 1024  # a rule is a line; the body is read whole


def is_fault_path(path: str) -> bool:
    return path.split("?", 1)[0].rstrip("/").split("/")[:2] == ["", "faults"]


def answer(method: str, path: str, body: bytes, faults: Faults, workers: int = 1) -> tuple[int, Any]:
    """(status, JSON document) for one request to the endpoint. With several worker
    processes a change would reach the one that took the request: refused (409)."""
    parts = path.split("?", 1)[0].rstrip("/").split("/")[2:]
    if workers > 1 and method not in ("GET", "HEAD"):
        why = f"with --workers {workers} a rule changed here would reach one worker only"
        return 409, {"error": f"{why}: use --fault or the config file's Fault lines (reload: SIGHUP)"}
    if not parts:
        if method in ("GET", "HEAD"):
            return 200, {"rules": faults.describe()}
        if method == "POST":
            return _add(body, faults)
        if method == "DELETE":
            faults.clear()
            return 200, {"rules": []}
        return 405, {"error": "/faults takes GET, POST or DELETE"}
    rule = next((r for r in faults.rules() if [str(r.id)] == parts), None)
    if rule is None:
        return 404, {"error": f"no fault rule {'/'.join(parts)}"}
    if method in ("GET", "HEAD"):
        return 200, rule.describe()
    if method == "DELETE":
        faults.remove(rule.id)
        return 200, rule.describe()
    return 405, {"error": "/faults/ID takes GET or DELETE"}


def _add(body: bytes, faults: Faults) -> tuple[int, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return 400, {"error": 'send a JSON object: {"rule": "host=H kind=KIND key=value ..."} or its keys'}
    try:
        handle = faults.add_rule(from_json(document))
    except (FaultError, TypeError) as exc:
        return 400, {"error": str(exc)}
    return 201, handle.rule.describe()
