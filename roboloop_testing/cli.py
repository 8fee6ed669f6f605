"""The episode_dataset command line as tests drive it."""

from __future__ import annotations

import pytest

from episode_dataset.cli import main


def dataset_cli_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one line a refused `python -m episode_dataset` command prints (exit 1, nothing on
    stdout)."""
    assert main(list(argv)) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("ERROR: "), captured.err
    assert not captured.out
    return captured.err.strip()
