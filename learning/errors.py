"""Errors `python -m learning.train` prints as one line (exit status 1). Defined outside
learning/train.py: run as `__main__`, that module's own classes would not be the ones the
online loop (learning.online) raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot run as written (one line)."""
