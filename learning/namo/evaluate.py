"""Score a Q-function checkpoint on a folder of mask files (all of it held out).

    python -m learning.namo.evaluate --ckpt PATH.ckpt --data-dir DIR [--batch-size 64]

Prints and returns MSE, mean per-state Spearman, top-1 agreement and the number of rankable
states (`learning.namo.metrics`), e.g. on MCTS episodes collected from seeds no training run saw.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from learning.checkpoint import CheckpointError, load_lightning
from learning.namo.data import QFunctionDataModule
from learning.namo.metrics import group_ids, ranking_metrics
from learning.namo.model import QFunctionNet


def evaluate(ckpt: str, data_dir: str, batch_size: int = 64) -> dict[str, float]:
    model = load_lightning(QFunctionNet, ckpt)
    dm = QFunctionDataModule(
        data_dir,
        batch_size,
        num_workers=0,
        val_fraction=0.0,
        test_fraction=1.0,
        image_size=model.image_size,
    )
    dm.prepare_data()
    dm.setup("test")
    cols: dict[str, list[np.ndarray]] = {"pred": [], "target": [], "episode": [], "goal": []}
    with torch.inference_mode():
        for b in dm.test_dataloader():
            cols["pred"].append(model(b["state_masks"], b["action_masks"]).reshape(-1).numpy())
            cols["target"].append(b["target_q"].reshape(-1).numpy())
            cols["episode"].append(b["episode"].numpy())
            cols["goal"].append(b["goal"].numpy())
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    out = {"mse": float(np.mean((cat["pred"] - cat["target"]) ** 2)), "samples": len(cat["pred"])}
    out.update(ranking_metrics(cat["pred"], cat["target"], group_ids(cat["episode"], cat["goal"])))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learning.namo.evaluate",
        description="Score a Q-function checkpoint on a folder of mask files (all held out).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="QFunctionNet checkpoint")
    parser.add_argument("--data-dir", required=True, help="folder of .npz mask files")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.ckpt, args.data_dir, args.batch_size)
    except CheckpointError as err:
        sys.exit(f"learning.namo.evaluate: {err}")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
