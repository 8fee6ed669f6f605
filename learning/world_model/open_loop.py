"""Open-loop prediction check of a trained world model on held-out recorded episodes.

    python -m learning.world_model.open_loop --ckpt outputs/world_model/<ts>/checkpoints/last.ckpt
        --dataset data/held_out.hdf5 --context 5 --horizon 15

For every window of `context + horizon` steps (one per `stride` steps of each episode): filter
the first `context` frames from the initial state (as training does), then imagine `horizon`
steps under the recorded actions with noise 0 (the prior's mode) and decode each imagined
latent. Reported per image key: pixel MSE (pixels in [0, 1]) of the decoded frames against the
recorded ones, of the copy-last-frame baseline (the last context frame, repeated), and of a
context-free reference: the mean of all the predicted frames, one constant image (an oracle
that knows the held-out data; a model below it predicts more than the average scene). The
steps run through the same modules the ONNX graphs export (`FilterGraph`, `ImagineGraph`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from episode_dataset import EpisodeReader
from episode_dataset.ranges import POSITIVE_INT, HelpFormatter
from learning.checkpoint import CheckpointError, load_model
from learning.world_model.module import FilterGraph, ImagineGraph, WorldModel


def windows(
    reader: EpisodeReader, keys: Sequence[str], length: int, stride: int
) -> dict[str, np.ndarray]:
    """obs[key] (N, length, *shape) and actions (N, length, A) of every window that fits."""
    obs: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    actions = []
    for ep in reader.episodes:
        n = reader.num_steps(ep)
        frames = {k: reader.read_obs(ep, k) for k in keys}
        acts = reader.read_actions(ep).astype(np.float32)
        for s in range(0, n - length + 1, stride):
            for k in keys:
                obs[k].append(frames[k][s : s + length])
            actions.append(acts[s : s + length])
    if not actions:
        raise ValueError(f"{reader.path}: no episode holds {length} steps")
    return {"actions": np.stack(actions), **{k: np.stack(v) for k, v in obs.items()}}


@torch.no_grad()
def open_loop_errors(
    model: WorldModel, data: dict[str, np.ndarray], context: int, horizon: int
) -> dict[str, dict[str, Any]]:
    """Per image key: {"model", "copy_last_frame", "mean_frame": MSE, "per_step": [model MSE
    at imagined step 1..horizon], "per_step_copy": [the baseline's], "windows": N} over the
    windows in `data` (from `windows`, length context + horizon)."""
    model = model.eval()
    filter_step, imagine_step = FilterGraph(model), ImagineGraph(model)
    actions = torch.from_numpy(data["actions"])
    n = len(actions)
    h, z = model.rssm.initial_state(n)
    zero_noise = torch.zeros(n, model.rssm.stoch_dim)
    prev = torch.zeros_like(actions[:, 0])
    for t in range(context):
        obs = [torch.from_numpy(data[k][:, t]) for k in model.obs_keys]
        h, z = filter_step(*obs, prev, zero_noise, h, z)
        prev = actions[:, t]
    image_keys = model.decoder.image_keys
    frames = {k: torch.from_numpy(data[k]).float() / 255.0 for k in image_keys}
    per_step: dict[str, list[float]] = {k: [] for k in image_keys}
    baseline: dict[str, list[float]] = {k: [] for k in image_keys}
    for t in range(context, context + horizon):
        h, z, _, _ = imagine_step(actions[:, t - 1], zero_noise, h, z)
        decoded = model.decoder(model.rssm.features(h, z))
        for k in image_keys:
            target, last = frames[k][:, t], frames[k][:, context - 1]
            per_step[k].append(float(((decoded[k].clamp(0, 1) - target) ** 2).mean()))
            baseline[k].append(float(((last - target) ** 2).mean()))
    results = {}
    for k in image_keys:
        targets = frames[k][:, context:]
        mean_frame = float(((targets.mean((0, 1)) - targets) ** 2).mean())
        results[k] = {
            "model": float(np.mean(per_step[k])),
            "copy_last_frame": float(np.mean(baseline[k])),
            "mean_frame": mean_frame,
            "per_step": per_step[k],
            "per_step_copy": baseline[k],
            "windows": n,
        }
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learning.world_model.open_loop",
        description="Image MSE of a world model's open-loop predictions on held-out episodes, "
        "against the copy-last-frame baseline.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="world-model checkpoint (learning.train)")
    parser.add_argument("--dataset", required=True, help="held-out episode dataset file")
    parser.add_argument(
        "--context", type=POSITIVE_INT, default=5, help="filtered steps per window"
    )
    parser.add_argument(
        "--horizon", type=POSITIVE_INT, default=15, help="imagined steps per window"
    )
    parser.add_argument(
        "--stride", type=POSITIVE_INT, default=10, help="steps between window starts"
    )
    args = parser.parse_args(argv)
    try:
        model, _ = load_model(args.ckpt)
    except CheckpointError as err:
        raise SystemExit(f"learning.world_model.open_loop: {err}") from None
    if not isinstance(model, WorldModel) or not model.decoder.image_keys:
        raise SystemExit(f"learning.world_model.open_loop: {args.ckpt}: no image world model")
    reader = EpisodeReader(args.dataset)
    try:
        data = windows(reader, model.obs_keys, args.context + args.horizon, args.stride)
    except ValueError as err:
        raise SystemExit(f"learning.world_model.open_loop: {err}") from None
    for key, r in open_loop_errors(model, data, args.context, args.horizon).items():
        print(
            f"{key}: {r['windows']} windows, {args.horizon} imagined steps: model MSE "
            f"{r['model']:.5f}, copy-last-frame {r['copy_last_frame']:.5f} "
            f"(ratio {r['model'] / r['copy_last_frame']:.2f}), mean frame {r['mean_frame']:.5f}"
        )
        steps = ", ".join(
            f"{m:.4f}/{c:.4f}" for m, c in zip(r["per_step"], r["per_step_copy"], strict=True)
        )
        print(f"  per imagined step, model/copy-last-frame: {steps}")


if __name__ == "__main__":
    main()
