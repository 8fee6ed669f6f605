"""Q-chunking exports: sampler + critic ensemble + argmax in ONE ONNX graph, equal to torch.

A tiny ACRLPD and a tiny QC-FQL take a few offline gradient steps through `learning.train`
(configs/train_acrlpd.yaml) on a short OGBench cube dataset generated here, then go through the
exporter: ACRLPD through `python -m learning.export`'s main (a `best_of_n` graph), QC-FQL through
`export_checkpoint` (its one-step policy, a `policy` graph). On many rows of dataset
observations and shared noise, onnxruntime equals torch `select_chunk`: the chosen chunk within
1e-5, and the same candidate whenever the best two candidates' Q differ by more than 1e-4
(closer than that, float rounding may pick either; the chunk must still be one of the two).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from episode_dataset import EpisodeReader
from learning.checkpoint import load_model
from learning.export import export_checkpoint
from learning.export import main as export_main
from learning.train import compose_config, run
from roboloop_runtime import OnnxPolicy

ENV = "cube-single-singletask-task1-v0"
N, HORIZON, ROWS = 16, 5, 512
TINY = (  # CPU smoke sizes; the maths is the same at 4x512 and 10 Euler steps
    "batch_size=16",
    "flow_steps=3",
    "model.critic_hidden_dims=[32,32]",
    "actor_hidden_dims=[32,32]",
    "eval_episodes=0",
    "online.progress_bar=false",
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sim.ogbench import generate

    path = tmp_path_factory.mktemp("qc_data") / "cube.hdf5"
    generate(ENV, "noisy", 2, 0, path, episode_steps=60, progress=False)
    return path


def train(tmp: Path, dataset: Path, name: str, *overrides: str) -> Path:
    """last.ckpt of a few offline gradient steps (no env steps)."""
    result = run(
        compose_config(
            "train_acrlpd",
            [
                f"dataset={dataset}",
                f"env_id={ENV}",
                f"run_dir={tmp / name}",
                "offline_steps=3",
                "online_steps=0",
                f"horizon_length={HORIZON}",
                *TINY,
                *overrides,
            ],
        )
    )
    return Path(result["last_ckpt"])


def observations(dataset: Path, rows: int) -> dict[str, np.ndarray]:
    """`rows` dataset frames (cycled) as one batch {key: (rows, 1, *shape)}."""
    reader = EpisodeReader(dataset)
    obs = {
        key: np.concatenate([reader.read_obs(ep, key) for ep in reader.episodes])
        for key in reader.obs_specs
    }
    return {k: np.resize(v, (rows, *v.shape[1:]))[:, None] for k, v in obs.items()}


def torch_select(algo: torch.nn.Module, obs: dict[str, np.ndarray], noise: np.ndarray):
    with torch.no_grad():
        chunk, q, index = algo.select_chunk(
            {k: torch.from_numpy(v) for k, v in obs.items()}, torch.from_numpy(noise)
        )
    return chunk.numpy(), q.numpy(), index.numpy()


def test_best_of_n_graph_chooses_the_chunk_torch_chooses(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = train(
        tmp_path, dataset, "acrlpd", "model=acrlpd", f"best_of_n_samples={N}", "num_critics=3"
    )
    out = tmp_path / "acrlpd.onnx"
    export_main(["--ckpt", str(ckpt), "--out", str(out)])  # `python -m learning.export`
    assert "parity onnxruntime vs torch" in capsys.readouterr().out

    policy = OnnxPolicy(out, device="cpu", threads=1)
    meta = policy.metadata
    assert meta.model_type == "best_of_n" and meta.noise_shape == (N, HORIZON, meta.action_dim)
    assert meta.n_action_steps == HORIZON  # the chunk runs open-loop
    algo, _ = load_model(ckpt)
    algo.eval()
    obs = observations(dataset, ROWS)
    noise = np.random.default_rng(0).standard_normal((ROWS, *meta.noise_shape), np.float32)
    got = policy.run({**{f"obs.{k}": v for k, v in obs.items()}, "noise": noise})
    chunk, q, index = torch_select(algo, obs, noise)

    # Every candidate's chunk and mean Q in torch: select_chunk over one noise at a time.
    each = [torch_select(algo, obs, noise[:, k : k + 1]) for k in range(N)]
    cand = np.stack([c for c, _, _ in each], 1)  # (ROWS, N, H, A)
    cand_q = np.stack([v for _, v, _ in each], 1)  # (ROWS, N)
    np.testing.assert_array_equal(index, cand_q.argmax(1))
    top2 = np.sort(cand_q, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.5, "the tiny critic must separate most candidates"
    # onnxruntime's choice, as the candidate its chunk is
    ort_index = np.abs(got["actions"][:, None] - cand).reshape(ROWS, N, -1).max(2).argmin(1)
    np.testing.assert_array_equal(ort_index[clear], index[clear])
    rows = np.arange(ROWS)
    np.testing.assert_allclose(got["actions"], cand[rows, ort_index], atol=1e-5)
    np.testing.assert_allclose(got["actions"][clear], chunk[clear], atol=1e-5)
    np.testing.assert_allclose(got["q"], cand_q[rows, ort_index], atol=1e-5)
    assert np.abs(got["q"] - q).max() <= 1e-4 + 1e-5  # a close call changes q by <= the gap


def test_qc_fql_one_step_policy_exports_with_parity(tmp_path: Path, dataset: Path) -> None:
    ckpt = train(tmp_path, dataset, "qc_fql", "model=qc_fql")
    out = tmp_path / "qc_fql.onnx"
    meta = export_checkpoint(ckpt, out)
    assert meta["model_type"] == "policy" and meta["sampler"]["steps"] == 1
    policy = OnnxPolicy(out, device="cpu", threads=1)
    algo, _ = load_model(ckpt)
    algo.eval()
    obs = observations(dataset, ROWS)
    noise = np.random.default_rng(1).standard_normal((ROWS, HORIZON, meta["action_dim"]))
    noise = noise.astype(np.float32)
    got = policy.run({**{f"obs.{k}": v for k, v in obs.items()}, "noise": noise})
    chunk, _, _ = torch_select(algo, obs, noise[:, None])
    np.testing.assert_allclose(got["actions"], chunk, atol=1e-5)
    assert np.ptp(chunk, axis=0).max() > 1e-3  # the chunk depends on observation and noise
