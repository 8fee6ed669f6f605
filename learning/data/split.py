"""The one train/val/test split of every data module: whole groups (episodes, scenes) go to one
part, so validation measures transfer to unseen ones, and the same seed gives the same split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

G = TypeVar("G")


def split_groups(
    groups: Sequence[G], fractions: Mapping[str, float | None], seed: int
) -> dict[str, list[G]]:
    """Cut one seeded permutation of `groups` into the parts named by `fractions`.

    `fractions` maps part name -> fraction of the groups, in the order the parts are cut from
    `np.random.default_rng(seed).permutation(len(groups))`; exactly one part maps to None and
    gets the rest (train). Every non-zero fraction gets at least one group and the rest keeps
    at least one, else ValueError. Each part comes back sorted.
    """
    rest = [name for name, frac in fractions.items() if frac is None]
    if len(rest) != 1:
        raise ValueError(f"split {dict(fractions)}: exactly one part must take the rest (None)")
    counts: dict[str, int] = {}
    for name, frac in fractions.items():
        if frac is None:
            continue
        if frac < 0:
            raise ValueError(f"split {name}={frac}: fractions must be >= 0")
        counts[name] = max(round(frac * len(groups)), 1) if frac > 0 else 0
    counts[rest[0]] = len(groups) - sum(counts.values())
    if counts[rest[0]] < 1:
        taken = ", ".join(f"{k}={v}" for k, v in fractions.items() if v is not None)
        raise ValueError(f"split {taken} leaves no {rest[0]} group out of {len(groups)}")
    order = np.random.default_rng(seed).permutation(len(groups))
    parts: dict[str, list[G]] = {}
    start = 0
    for name in fractions:
        parts[name] = sorted(groups[i] for i in order[start : start + counts[name]])
        start += counts[name]
    return parts
