"""JSON encoding for the store's JSON columns: plans, configs, metrics, tables.

Accepts what the engine hands over (dataclasses, objects with ``to_dict()``, numpy and torch scalars and
arrays, paths, tuples) and writes plain JSON; decoding gives dicts and lists back, never engine objects.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import PurePath
from typing import Any

from engine.errors import StoreError


def to_jsonable(value: Any) -> Any:
    """A structure of dict/list/str/int/float/bool/None equal in content to ``value``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v) for v in items]
    if isinstance(value, PurePath):
        return str(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_jsonable(to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    tolist = getattr(value, "tolist", None)  # numpy arrays/scalars, torch tensors
    if callable(tolist):
        return to_jsonable(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return to_jsonable(item())
    raise TypeError(f"cannot store a {type(value).__name__} as JSON; pass a dict, list, number or string")


def dumps(value: Any) -> str | None:
    """JSON text of ``value`` (None stays SQL NULL)."""
    if value is None:
        return None
    return json.dumps(to_jsonable(value), sort_keys=True)


def loads(text: str | None) -> Any:
    """Decoded JSON column (SQL NULL gives None).

    Raises:
        StoreError: the column does not hold JSON (the store was edited outside TopoPrune).
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"a value in the run store is not valid JSON ({exc}: {text[:40]!r}); the store was edited outside "
            f"TopoPrune: repair that row with sqlite3, or point TOPOPRUNE_HOME elsewhere"
        ) from None


def strict_json(value: Any) -> Any:
    """``to_jsonable(value)`` with NaN and infinities replaced by None, so the result is RFC 8259 JSON."""
    value = to_jsonable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    return value
