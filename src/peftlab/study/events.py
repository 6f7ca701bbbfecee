"""The worker -> runner progress protocol: JSON objects on the worker's stdout, one a line, after a prefix
(anything else a library prints on stdout goes to the run's log)."""

from __future__ import annotations

import json
import sys
from typing import Any

PREFIX = "@@peftlab-event "


def emit(event: str, **data: Any) -> None:
    """Write one progress event (e.g. emit("step", step=3, total=150, loss=0.9)) and flush."""
    sys.stdout.write(PREFIX + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event of a worker's stdout line, or None for any other output."""
    if not line.startswith(PREFIX):
        return None
    try:
        return json.loads(line[len(PREFIX):])
    except json.JSONDecodeError:
        return None
