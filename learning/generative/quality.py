"""Quality vs speed of goal-mask samplers: IoU / Dice of thresholded samples on the val split.

    python -m learning.generative.quality [--quick] [--data-dir DIR] [--work-dir DIR]
        [--fm-ckpt CKPT] [--diffusion-ckpt CKPT] [--models flow_matching ...] [--out FILE.json]
        [--episodes DIR [--q-model Q.onnx] [--mcts-budget B] [--planner-seeds N --level L]]

Without checkpoints it trains a flow-matching and a diffusion DiT (network=dit_small, 32 px,
aux_loss_weight 0.1) through `learning.train.run` for a CPU budget of minutes each, then
evaluates every sampler on the same checkpoint, validation scenes and initial noise. Without a
data dir it writes the synthetic NAMO-like task (`synthetic.py`). `bench/generative_quality.py`
wraps this. With `--episodes` (MCTS episode files of held-out NAMO scenes) every sampler of at
most `PROPOSAL_MAX_NFE` evaluations is also judged by what its proposals achieve
(`learning.generative.proposals`: valid-move rate, best-of-K Q, planner success), beside a
reference row of uniform proposals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from episode_dataset.ranges import NON_NEGATIVE_INT, POSITIVE_INT, SEED_ARG, HelpFormatter
from learning.data.keys import CONTEXT, TARGET
from learning.generative.module import GenerativeModule
from learning.generative.proposals import ProposalEval, TorchGenerator
from learning.generative.samplers import HFDiffusionSampler, ODESampler
from sim.namo.scene import LEVELS

FM_SAMPLERS = [
    ("euler", 1),
    ("euler", 2),
    ("euler", 5),
    ("euler", 10),
    ("euler", 20),
    ("midpoint", 5),
    ("midpoint", 10),
    ("rk4", 5),
    ("dopri5", 0),
]
FM_CONFIG, DIFF_CONFIG = "train_fb_flow_matching", "train_hf_diffusion"
V_PREDICTION = "model.path.prediction_type=v_prediction"
DIFFUSION_SAMPLERS = [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddpm", 50), ("ddpm", 1000)]
MODELS = ("flow_matching", "diffusion", "diffusion_v_prediction")
PROPOSAL_MAX_NFE = 50  # proposal metrics sample items x K scenes: skip the costliest samplers


def iou_dice(pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample IoU and Dice of boolean masks (B, ...); empty-vs-empty counts as 1."""
    p, t = pred.flatten(1).float(), truth.flatten(1).float()
    inter, ps, ts = (p * t).sum(1), p.sum(1), t.sum(1)
    union = ps + ts - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    dice = torch.where(ps + ts > 0, 2 * inter / (ps + ts).clamp(min=1), torch.ones_like(inter))
    return iou, dice


class _Counter:
    """Counts network evaluations (NFE) of a sampler run."""

    def __init__(self, module: GenerativeModule, context: torch.Tensor):
        self.fn, self.calls = module.model_fn(context), 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x, t)


@torch.no_grad()
def evaluate_sampler(
    module: GenerativeModule,
    sampler: Any,
    batches: list[dict[str, torch.Tensor]],
    seed: int = 0,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Mean IoU/Dice over the batches, mean seconds per batch, NFE per sample."""
    ious, dices, seconds, nfe = [], [], [], 0
    for i, batch in enumerate(batches):
        context, truth = batch[CONTEXT], batch[TARGET] > 0.5
        gen = torch.Generator().manual_seed(seed + i)
        noise = torch.randn(truth.shape, generator=gen)
        counter = _Counter(module, context)
        start = time.perf_counter()
        x1 = sampler.sample(module.path, counter, noise, gen)
        seconds.append(time.perf_counter() - start)
        pred = (x1 + 1) * 0.5 > threshold
        iou, dice = iou_dice(pred, truth)
        ious.append(iou)
        dices.append(dice)
        nfe = counter.calls
    return {
        "iou": float(torch.cat(ious).mean()),
        "dice": float(torch.cat(dices).mean()),
        "sec_per_batch": sum(seconds) / len(seconds),
        "nfe": nfe,
        "batch_size": int(batches[0][TARGET].shape[0]),
    }


def _train(
    config: str, data_dir: str, run_dir: Path, epochs: int, files: int, extra: list[str]
) -> str:
    from learning.train import compose_config, run

    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # same work dir: reuse the finished run
        return str(last)
    cfg = compose_config(
        config,
        [
            f"data.data_dir={data_dir}",
            f"data.max_files={files}",
            "network=dit_small",
            "image_size=32",
            "model.aux_loss_weight=0.1",
            f"max_epochs={epochs}",
            "batch_size=32",
            "base_lr=1e-3",
            "num_workers=0",
            "model.sample_every_n_epochs=0",
            f"run_dir={run_dir}",
            "~trainer.callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
            *extra,
        ],
    )
    return run(cfg)["last_ckpt"]


def _val_batches(module_cfg: dict, data_dir: str, files: int, batch: int, ckpt: str) -> list[dict]:
    from learning.checkpoint import instantiate_trusted

    data = dict(module_cfg["data"], data_dir=data_dir, max_files=files, batch_size=batch)
    dm = instantiate_trusted(data, ckpt, "data")  # the data config comes from the checkpoint
    dm.setup("validate")
    return list(dm.val_dataloader())


def run_quality(
    quick: bool = False,
    data_dir: str | None = None,
    fm_ckpt: str | None = None,
    diffusion_ckpt: str | None = None,
    work_dir: str | None = None,
    proposals: ProposalEval | None = None,
    models: tuple[str, ...] = MODELS,
) -> list[dict[str, Any]]:
    """One row per (model, sampler): iou, dice, sec_per_batch, nfe (+ proposal metrics)."""
    from learning.checkpoint import load_model
    from learning.generative.synthetic import write_synthetic_dataset

    if work_dir is None:  # a scratch folder, removed afterwards (work_dir keeps and reuses one)
        with tempfile.TemporaryDirectory(prefix="generative_quality_") as scratch:
            return run_quality(
                quick, data_dir, fm_ckpt, diffusion_ckpt, scratch, proposals, models
            )
    work = Path(work_dir)
    files = 320 if quick else 1200
    epochs = 8 if quick else 60
    if data_dir is None:
        data_dir = str(work / "data")
        if not Path(data_dir).is_dir():
            write_synthetic_dataset(data_dir, files, size=64, seed=0)
    ddim = [HFDiffusionSampler(t, s) for t, s in DIFFUSION_SAMPLERS]
    plans = []
    if "flow_matching" in models:
        ckpt = fm_ckpt or _train(FM_CONFIG, data_dir, work / "fm", epochs, files, [])
        plans.append(
            ("flow_matching", ckpt, [ODESampler(m, max(s, 1), 1e-4, 1e-4) for m, s in FM_SAMPLERS])
        )
    if "diffusion" in models:
        run_dir = work / "diffusion"
        ckpt = diffusion_ckpt or _train(DIFF_CONFIG, data_dir, run_dir, epochs, files, [])
        plans.append(("diffusion", ckpt, ddim))
    if not quick and diffusion_ckpt is None and "diffusion_v_prediction" in models:
        # Same budget, v-prediction: weights the low-SNR (layout-deciding) steps like flow
        # matching does; epsilon prediction nearly ignores them (docs/generative.md).
        v_run = work / "diffusion_v"
        v_ckpt = _train(DIFF_CONFIG, data_dir, v_run, epochs, files, [V_PREDICTION])
        plans.append(("diffusion_v_prediction", v_ckpt, ddim[:3]))
    rows: list[dict[str, Any]] = []
    if quick:
        plans = [(n, c, s[:: 2 if n == "flow_matching" else 1][:4]) for n, c, s in plans]
    batches = None
    items, scorer = proposals.setup() if proposals else ([], None)
    for name, ckpt, samplers in plans:
        module, cfg = load_model(ckpt)
        batches = batches or _val_batches(cfg, data_dir, files, 64, str(ckpt))
        for sampler in samplers:
            row = {"model": name, "sampler": sampler.describe()["type"]}
            row["steps"] = sampler.steps if sampler.nfe is not None else "adaptive"
            row |= evaluate_sampler(module, sampler, batches)
            if proposals and sampler.nfe is not None and sampler.nfe <= PROPOSAL_MAX_NFE:
                k, seed = proposals.num_proposals, proposals.seed
                row |= proposals.measure(TorchGenerator(module, sampler, k, seed), items, scorer)
            rows.append(row)
    # Reference: the target object where it already is (a goal that moves nothing).
    copy = [iou_dice(b[CONTEXT][:, 4:5] > 0.5, b[TARGET] > 0.5) for b in batches]
    rows.append(
        {
            "model": "baseline",
            "sampler": "target_object_as_goal",
            "steps": 0,
            "iou": float(torch.cat([c[0] for c in copy]).mean()),
            "dice": float(torch.cat([c[1] for c in copy]).mean()),
            "sec_per_batch": 0.0,
            "nfe": 0,
            "batch_size": int(batches[0][TARGET].shape[0]),
        }
    )
    if proposals:  # what the uniform proposals of `learned_q` achieve on the same items
        rows.append(
            {"model": "reference", "sampler": "uniform_proposals", "steps": 0, "nfe": 0}
            | proposals.measure(None, items, scorer)
        )
    for r in rows:
        r.update(data_dir=data_dir, val_samples=sum(len(b[TARGET]) for b in batches))
    return rows


# (header, row key, format); a column shows when any row has its key, "-" where one lacks it.
COLUMNS = [
    ("model", "model", "{}"),
    ("sampler", "sampler", "{}"),
    ("steps", "steps", "{}"),
    ("NFE", "nfe", "{}"),
    ("IoU", "iou", "{:.3f}"),
    ("Dice", "dice", "{:.3f}"),
    ("s/batch", "sec_per_batch", "{:.3f}"),
    ("IoU MCTS", "target_iou", "{:.3f}"),  # best of the MCTS root proposals of the object
    ("valid", "valid_rate", "{:.2f}"),  # masks that became moves the transition model accepts
    ("Q_learn", "q_learned_generated", "{:.3f}"),  # best of K, paired with the uniform K
    ("Q_learn unif", "q_learned_uniform", "{:.3f}"),
    ("Q_MCTS", "q_mcts_generated", "{:.3f}"),  # best of K, MCTS with the root moves fixed
    ("Q_MCTS unif", "q_mcts_uniform", "{:.3f}"),
    ("success", "planner_success", "{:.2f}"),  # dit_q (reference row: learned_q)
    ("moves", "planner_moves_per_solve", "{:.2f}"),
    ("s/decision", "planner_seconds_per_decision", "{:.3f}"),
]


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Goal-mask samplers: quality vs speed (val split, threshold 0.5)")
    columns = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header in ("model", "sampler") else "right")
    for r in rows:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in columns]
        table.add_row(*cells)
    Console(width=max(200, Console().width)).print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learning.generative.quality",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir")
    parser.add_argument("--fm-ckpt")
    parser.add_argument("--diffusion-ckpt")
    parser.add_argument("--work-dir")
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to evaluate"
    )
    parser.add_argument("--out", help="also write the rows as JSON here")
    judged = parser.add_argument_group("proposals judged by what they achieve (--episodes)")
    judged.add_argument("--episodes", help="MCTS episode_*.json of held-out scenes")
    judged.add_argument("--q-model", help="Q-function .onnx/.ckpt: best-of-K Q, planner")
    judged.add_argument("--mcts-budget", type=NON_NEGATIVE_INT, default=32, help="0: no MCTS Q")
    judged.add_argument("--proposals", type=POSITIVE_INT, default=8, help="K per object")
    judged.add_argument("--max-items", type=POSITIVE_INT, default=64, help="(state, object) items")
    judged.add_argument(
        "--planner-seeds", type=NON_NEGATIVE_INT, default=0, help="scenes for success"
    )
    judged.add_argument("--first-seed", type=SEED_ARG, default=100_000, help="of those scenes")
    judged.add_argument(
        "--level",
        choices=sorted(LEVELS),
        help="scene level of those scenes (unset: generate_scene's own)",
    )
    judged.add_argument("--max-moves", type=POSITIVE_INT, default=5, help="decisions per episode")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).is_dir():  # refused before minutes of training, not after
        parser.error(f"--out {args.out} is a directory, not a JSON file")
    torch.set_num_threads(1)
    spec = None
    if args.episodes:
        seeds = tuple(range(args.first_seed, args.first_seed + args.planner_seeds))
        spec = ProposalEval(
            args.episodes, args.q_model, args.mcts_budget, args.proposals, args.max_items,
            seeds, args.level, args.max_moves,
        )  # fmt: skip
    rows = run_quality(
        args.quick, args.data_dir, args.fm_ckpt, args.diffusion_ckpt, args.work_dir, spec,
        tuple(args.models),
    )  # fmt: skip
    print_table(rows)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
