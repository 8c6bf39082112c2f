"""GroupPlan: one channel group's entry in a PruningPlan (channels kept, their indices and bit-widths).

Also the whole-count check every keep value goes through. Plain data and checks; no topology here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import PlanError

MAX_BITS = 32


def keep_count(value: Any, *, what: str = "keep count") -> int:
    """A whole channel count >= 1 from an int or an integral float (3, 3.0); anything else is refused.

    Raises:
        PlanError: a fraction (1.5), a count below 1, a bool, a string or a non-number.
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PlanError(f"{what} {value!r} is not a number; give a whole channel count >= 1")
    if isinstance(value, numbers.Integral):
        count = int(value)
    elif math.isfinite(float(value)) and float(value).is_integer():
        count = int(value)
    else:
        raise PlanError(
            f"{what} {value!r} is not a whole number of channels; give a count >= 1 "
            "(or, in a version 2 plan, a keep_ratio in (0, 1])"
        )
    if count < 1:
        raise PlanError(f"{what} {count} must be at least 1 (a group always keeps a channel)")
    return count


def _int_list(values: Any, what: str) -> tuple[int, ...]:
    if hasattr(values, "tolist"):  # numpy arrays, torch tensors
        values = values.tolist()
    if not isinstance(values, (list, tuple, range)):
        raise PlanError(f"{what} must be a list of whole numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise PlanError(f"{what} must be whole numbers, got {v!r}")
        out.append(int(v))
    return tuple(out)


@dataclass(frozen=True)
class GroupPlan:
    """What a plan does to one channel group.

    Attributes:
        keep: channels kept, >= 1.
        channels: the group's channel count when known (gives keep_ratio; checked against the topology).
        indices: kept channel indices (group numbering, sorted as given), or None = chosen by the criterion.
        bits: bit-width of each kept channel (one per kept channel, aligned with `indices` when given),
            0..32, where 0 means the kept slot is quantized away (pruned); None = full precision.
    """

    keep: int
    channels: int | None = None
    indices: tuple[int, ...] | None = None
    bits: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        keep = keep_count(self.keep)
        object.__setattr__(self, "keep", keep)
        if self.channels is not None:
            channels = keep_count(self.channels, what="channel count")
            if keep > channels:
                raise PlanError(f"keep count {keep} is more than the group's {channels} channels")
            object.__setattr__(self, "channels", channels)
        if self.indices is not None:
            idx = _int_list(self.indices, "indices")
            top = self.channels if self.channels is not None else math.inf
            if len(idx) != keep or len(set(idx)) != keep or not all(0 <= i < top for i in idx):
                bound = "" if top == math.inf else f" in [0, {top})"
                raise PlanError(
                    f"indices must be {keep} distinct channels{bound} (one per kept channel), "
                    f"got {len(idx)} entries"
                )
            object.__setattr__(self, "indices", idx)
        if self.bits is not None:
            bits = _int_list(self.bits, "bits")
            if len(bits) != keep:
                raise PlanError(f"bits must give one bit-width per kept channel ({keep}), got {len(bits)}")
            bad = [b for b in bits if not 0 <= b <= MAX_BITS]
            if bad:
                raise PlanError(f"bit-width {bad[0]} is outside 0..{MAX_BITS} (0 = pruned)")
            object.__setattr__(self, "bits", bits)

    @property
    def keep_ratio(self) -> float | None:
        """keep / channels, or None when the group's size is not recorded."""
        return None if self.channels is None else self.keep / self.channels

    def to_dict(self) -> dict:
        """The group's v2 JSON entry."""
        return {
            "keep": self.keep,
            "keep_ratio": self.keep_ratio,
            "channels": self.channels,
            "indices": None if self.indices is None else list(self.indices),
            "bits": None if self.bits is None else list(self.bits),
        }


class _DerivedMap(dict):
    """A read-only dict derived from plan.groups: changing it in place would silently be lost."""

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise TypeError("this map is derived from plan.groups; assign a new one (plan.keep = {...}) instead")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = __ior__ = _refuse  # type: ignore

    def __reduce__(self):
        return dict, (dict(self),)


def read_only_map(values: dict) -> dict:
    """`values` as a dict that refuses in-place changes (a view derived from plan.groups)."""
    return _DerivedMap(values)


def named_errors(name: str, fn, *args):
    """fn(*args), with a PlanError's message prefixed by the group's name."""
    try:
        return fn(*args)
    except PlanError as exc:
        raise PlanError(f"group {name!r}: {exc}") from None


def group_entry(name: str, value: GroupPlan | Mapping) -> GroupPlan:
    """A GroupPlan from a GroupPlan or a mapping with its fields."""
    if isinstance(value, GroupPlan):
        return value
    if not isinstance(value, Mapping):
        raise PlanError(
            f"group {name!r}: expected a GroupPlan or a mapping with 'keep', got {type(value).__name__}"
        )
    return named_errors(
        name,
        lambda: GroupPlan(value.get("keep"), value.get("channels"), value.get("indices"), value.get("bits")),
    )


def groups_from_maps(
    keep: Mapping[str, Any],
    indices: Mapping[str, Sequence[int]] | None,
    bits: Mapping[str, Sequence[int]] | None,
    channels: Mapping[str, int] | None,
) -> dict[str, GroupPlan]:
    """GroupPlans from v1-style maps; indices or bits of a group missing from `keep` cover the whole group."""
    for what, value in (("keep", keep), ("indices", indices), ("bits", bits), ("channels", channels)):
        if value is not None and not isinstance(value, Mapping):
            raise PlanError(f"plan {what} must map group names to values, got {type(value).__name__}")
    indices, bits, channels = indices or {}, bits or {}, channels or {}
    names = list(dict.fromkeys([*map(str, keep), *map(str, indices), *map(str, bits)]))
    keep = {str(k): v for k, v in keep.items()}
    indices = {str(k): v for k, v in indices.items()}
    bits = {str(k): v for k, v in bits.items()}
    channels = {str(k): v for k, v in channels.items()}
    groups = {}
    for name in names:
        if name in keep:
            count, size = keep[name], channels.get(name)
        else:  # v1 allowed indices for an untouched group: they must then cover all of it
            given = indices.get(name, bits.get(name))
            count = size = len(given) if isinstance(given, Sequence) else given
        groups[name] = named_errors(name, GroupPlan, count, size, indices.get(name), bits.get(name))
    return groups
