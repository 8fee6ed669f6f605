"""Benchmark output: a rich table on stdout and the same rows as JSON in bench/results/."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def report(name: str, rows: list[dict[str, Any]], note: str | None = None) -> Path:
    """Print `rows` as a table titled `name` and write bench/results/<name>.json."""
    table = Table(title=name, caption=note)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_fmt(row.get(c, "")) for c in columns))
    Console(width=max(200, Console().width)).print(table)  # wide enough for a log file
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "name": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "note": note,
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def latency_columns(ort: dict[str, float], eager: dict[str, float]) -> dict[str, float]:
    """Row columns of an onnxruntime vs torch latency pair ({"median_ms", "p90_ms"} each)."""
    return {
        "onnxruntime_ms": round(ort["median_ms"], 3),
        "onnxruntime_p90_ms": round(ort["p90_ms"], 3),
        "torch_ms": round(eager["median_ms"], 3),
        "torch_p90_ms": round(eager["p90_ms"], 3),
        "torch/onnxruntime": round(eager["median_ms"] / ort["median_ms"], 2),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
