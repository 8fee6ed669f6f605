"""Damaged copies of a file's bytes for fuzz tests: what a bad disk, a cut download or a
half-written copy leaves."""

from __future__ import annotations

import numpy as np


def damage(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """(what was done, the damaged bytes): a truncation (1 in 4) or 4 random bytes at a
    random offset."""
    if rng.random() < 0.25:
        cut = int(rng.integers(0, len(data)))
        return f"truncated at {cut}", data[:cut]
    offset = int(rng.integers(0, len(data) - 4))
    flipped = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
    return f"4 bytes at {offset}", data[:offset] + flipped + data[offset + 4 :]
