"""Numeric ranges shared by every command line and by the training configs' checks.

Kept in the bottom layer so that each CLI (episode_dataset, sim, learning, the ROS tools, demo)
refuses an absurd number the same way: `--episodes -1` is argparse's one-line usage error
(`argument --episodes: must be an integer >= 1, got '-1'`, exit 2) before any work, not a
traceback or an empty file written with exit 0. learning/config_rules.py applies the same
`Range`s to config keys.

    parser.add_argument("--episodes", type=arg(count(1)), default=10)
    parser.add_argument("--rate", type=arg(number(0, low_open=True)))
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Which values a number takes: an integer or any finite real between `low` and `high`."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    nullable: bool = False  # null/None means something (torch_threads: torch's default)
    also: tuple[int, ...] = ()  # sentinels with a meaning (max_epochs -1: no limit)

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (
            value < self.high or (value == self.high and not self.high_open)
        )

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            text = kind
        extras = [str(v) for v in self.also] + (["null"] if self.nullable else [])
        return f"{text} (or {' or '.join(extras)})" if extras else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else str(x)


def count(low: int = 1, **kw: Any) -> Range:
    """An integer >= low."""
    return Range(True, low, **kw)


def number(low: float | None = None, high: float | None = None, **kw: Any) -> Range:
    """A finite real number in [low, high] (ends excluded with low_open / high_open)."""
    return Range(False, low, high, **kw)


SEED = count(0, high=2**32 - 1)  # numpy's and Lightning's seed range


def arg(rule: Range) -> Callable[[str], int | float]:
    """An argparse `type=` that parses a command-line word and holds it to `rule`."""

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if rule.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if not rule.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    return parse


def checked(
    name: str, value: Any, rule: Range, error: type[ValueError] = ValueError
) -> int | float | None:
    """`value` (a numpy integer as an int) if `rule` takes it, else `error` naming the Python
    argument: the same rules for library calls (training/api.py, its data collection)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        value = value.item()
    if not rule.accepts(value):
        raise error(f"{name}={value!r}: must be {rule}")
    return value


def checked_bool(name: str, value: Any, error: type[ValueError] = ValueError) -> bool:
    """`value` (a numpy bool as a bool) if it is True or False, else `error` naming the Python
    argument: a flag read by its truth would take "no" (or 2) as True."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        value = value.item()
    if not isinstance(value, bool):
        raise error(f"{name}={value!r}: must be True or False")
    return value


# The kinds the command lines take most.
POSITIVE_INT = arg(count(1))
NON_NEGATIVE_INT = arg(count(0))
SEED_ARG = arg(SEED)
POSITIVE_FLOAT = arg(number(0, low_open=True))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every CLI's --help: each option's default, except None (its help says what unset means;
    argparse's own would append "(default: None)" after it) and a flag's (`--no-parity`'s
    "(default: True)" would read as the check being skipped)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (some libraries' messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__
