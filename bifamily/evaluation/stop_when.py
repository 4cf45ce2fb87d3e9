"""``[eval] stop_when``: end a run at the first scheduled evaluation whose values all reach their targets.

A recipe writes the targets as comparisons of scheduled metric values, comma-separated::

    stop_when = "judge_recognisable_ratio >= 0.8, judge_coverage >= 0.9"

``run.steps`` stays the cap. Each comparison must point the way its value improves (``>=`` for a value
that is better higher, ``<=`` for one better lower, as the metric declares), so a typo cannot stop a run
at the first evaluation where a figure got worse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import attrs

_TARGET = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=)\s*(\S+)\s*$")
IMPROVES = {">=": "max", "<=": "min"}  # the direction a comparison expects of its value


@attrs.frozen
class Target:
    """One comparison: ``name operator value``."""

    name: str
    operator: str  # ">=" or "<="
    value: float

    def met(self, values: Mapping[str, float]) -> bool:
        reached = values[self.name]
        return reached >= self.value if self.operator == ">=" else reached <= self.value


def parse_targets(text: str) -> tuple[Target, ...]:
    """The comparisons in ``text`` (empty: none); a ValueError says which part does not read."""
    targets = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _TARGET.match(part)
        value = _number(match.group(3)) if match else None
        if match is None or value is None:
            raise ValueError(f"{part.strip()!r} is not 'VALUE_NAME >= NUMBER' or 'VALUE_NAME <= NUMBER'")
        targets.append(Target(match.group(1), match.group(2), value))
    names = [target.name for target in targets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} named more than once")
    return tuple(targets)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def all_met(targets: Iterable[Target], values: Mapping[str, float]) -> bool:
    """Whether every target is reached by ``values`` (the scheduled metrics' values at one step)."""
    return all(target.met(values) for target in targets)
