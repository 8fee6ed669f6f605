"""Score a Q-function checkpoint on a folder of mask files (all of it held out).

    python -m learning.namo.evaluate --ckpt PATH.ckpt --data-dir [NAME=]DIR ... [--batch-size 64]

Prints one JSON line per folder (NAME, e.g. a level, defaults to the folder): MSE, mean
per-state Spearman, top-1 agreement, pair accuracy and the number of rankable states
(`learning.namo.metrics`), e.g. on MCTS episodes collected from seeds no training run saw.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

from episode_dataset.ranges import POSITIVE_INT, HelpFormatter
from learning.checkpoint import CheckpointError, load_lightning
from learning.data.keys import ACTION_MASKS, EPISODE_ID, GOAL_ID, STATE_MASKS, TARGET_Q
from learning.namo.data import QFunctionDataset, check_keys, find_mask_files
from learning.namo.metrics import group_ids, ranking_metrics
from learning.namo.model import QFunctionNet
from sim.namo.mask_files import MaskFileError


def evaluate(ckpt: str, data_dir: str, batch_size: int = 64) -> dict[str, float]:
    model = load_lightning(QFunctionNet, ckpt)
    files = find_mask_files(data_dir)  # all held out: no split
    for f in files:
        check_keys(f.path)
    loader = DataLoader(QFunctionDataset(files, model.image_size), batch_size=batch_size)
    cols: dict[str, list[np.ndarray]] = {"pred": [], "target": [], "episode": [], "goal": []}
    with torch.inference_mode():
        for b in loader:
            cols["pred"].append(model(b[STATE_MASKS], b[ACTION_MASKS]).reshape(-1).numpy())
            cols["target"].append(b[TARGET_Q].reshape(-1).numpy())
            cols["episode"].append(b[EPISODE_ID].numpy())
            cols["goal"].append(b[GOAL_ID].numpy())
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    out = {"mse": float(np.mean((cat["pred"] - cat["target"]) ** 2)), "samples": len(cat["pred"])}
    out.update(ranking_metrics(cat["pred"], cat["target"], group_ids(cat["episode"], cat["goal"])))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learning.namo.evaluate",
        description="Score a Q-function checkpoint on a folder of mask files (all held out).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="QFunctionNet checkpoint")
    parser.add_argument(
        "--data-dir", required=True, nargs="+", help="[NAME=]folder of .npz mask files"
    )
    parser.add_argument(
        "--batch-size", type=POSITIVE_INT, default=64, help="evaluation batch size"
    )
    args = parser.parse_args(argv)
    for spec in args.data_dir:
        name, _, folder = spec.rpartition("=")
        try:
            metrics = evaluate(args.ckpt, folder, args.batch_size)
        except (CheckpointError, MaskFileError) as err:
            sys.exit(f"learning.namo.evaluate: {err}")
        print(json.dumps({"data": name or folder, **metrics}))


if __name__ == "__main__":
    main()
