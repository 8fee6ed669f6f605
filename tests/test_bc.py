"""Behaviour cloning (`train_bc`, learning/algorithms/bc.py): the MLP and the LSTM variant learn
Reacher-v5 from 20 expert episodes, export as contract v2 `actor`s (the LSTM with its state as
state_in.* / state_out.*), and the exported file served through `load_runner` gives the
in-process return."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import sim
from episode_dataset import DatasetError
from learning.algorithms.bc import LSTMActor
from learning.checkpoint import load_model
from learning.errors import ConfigError
from learning.export import export_checkpoint, parity
from learning.torch_policy import TorchPolicy
from learning.train import compose_config, run
from roboloop_runtime import OnnxPolicy, load_runner
from sim.collect import collect
from sim.evaluate import EvalResult, RandomPolicy, evaluate_policy

ENV = "Reacher-v5"
EVAL_SEED, EVAL_EPISODES = 1000, 5
# Mean return over the 5 eval seeds, measured: expert -3.7; BC training seeds 0-2: MLP -5.6 to
# -7.4, LSTM -6.2 to -6.4; uniform random policies (seeds 0-4) -40.1 to -43.2.
RETURN_BAR = -15.0
QUIET = ["~trainer.callbacks.progress_bar", "seed=0"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bc") / "reacher_expert.hdf5"
    collect(ENV, "expert", 20, seed=0, out=out, progress=False)
    return out


def _train(demos: Path, out: Path, *overrides: str) -> tuple[Any, Path]:
    cfg = compose_config(
        "train_bc", [f"dataset={demos}", f"output_root={out}", *QUIET, *overrides]
    )
    result = run(cfg)
    onnx_path = out / "bc.onnx"
    export_checkpoint(result["last_ckpt"], onnx_path)
    model, _ = load_model(result["last_ckpt"])
    return model, onnx_path


def _evaluate(policy: Any) -> EvalResult:
    return evaluate_policy(ENV, policy, EVAL_EPISODES, EVAL_SEED)


class _RecurrentTorchPolicy:
    """The LSTM model acting in-process: one frame per step, (h, c) carried, zero at reset."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        self.state = self.model.initial_state(1)

    @torch.inference_mode()
    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        frame = {k: torch.as_tensor(v, dtype=torch.float32)[None, None] for k, v in obs.items()}
        actions, self.state = self.model.step(frame, self.state)
        return actions[0, 0].numpy()


def test_lstm_step_is_the_sequence_lstm() -> None:
    """`step`, written out for export, computes what nn.LSTM computes over a sequence."""
    torch.manual_seed(0)
    actor = LSTMActor(in_dim=5, action_dim=3, hidden_size=8, num_layers=2, head_dims=[16])
    x = torch.randn(4, 7, 5)
    with torch.no_grad():
        whole = actor(x)
        h = c = torch.zeros(4, 2, 8)
        steps = []
        for t in range(7):
            a, h, c = actor.step(x[:, t], h, c)
            steps.append(a)
    torch.testing.assert_close(torch.stack(steps, 1), whole, atol=1e-6, rtol=1e-5)


def test_lstm_on_images_exports_with_parity(tmp_path: Path) -> None:
    """Image keys go frame by frame through the image encoder inside the recurrent step."""
    demos = tmp_path / "camera.hdf5"
    collect(ENV, "expert", 2, seed=0, out=demos, camera=16, progress=False)
    model, onnx_path = _train(
        demos,
        tmp_path,
        "model.use_sequences=true",
        "sequence_length=10",
        "max_epochs=1",
        "batch_size=16",
        "data.val_fraction=0.5",
    )
    served = load_runner(onnx_path, device="cpu")
    assert served.metadata.observations["image"].feature_type == "image"
    assert served.metadata.observations["image"].shape == (16, 16, 3)
    assert parity(model, onnx_path) <= 1e-4


def test_random_policy_cannot_meet_the_bar() -> None:
    env = sim.make(ENV)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    returns = [_evaluate(RandomPolicy(low, high, seed=s)).mean_return for s in range(5)]
    assert max(returns) < RETURN_BAR - 20, returns


def test_mlp_bc_learns_and_its_export_acts_the_same(demos: Path, tmp_path: Path) -> None:
    model, onnx_path = _train(demos, tmp_path, "max_epochs=20", "batch_size=64")
    assert parity(model, onnx_path) <= 1e-4
    served = load_runner(onnx_path, device="cpu")
    assert isinstance(served, OnnxPolicy) and served.model_type == "actor"
    assert set(served.metadata.observations) == {"state"} and served.metadata.noise_shape is None
    assert served.metadata.obs_steps == 2 and not served.metadata.state

    exported, in_process = _evaluate(served), _evaluate(TorchPolicy(model))
    assert exported.mean_return > RETURN_BAR, exported.returns
    np.testing.assert_allclose(exported.returns, in_process.returns, atol=1e-3)


def test_lstm_bc_learns_and_its_export_carries_the_state(demos: Path, tmp_path: Path) -> None:
    model, onnx_path = _train(
        demos,
        tmp_path,
        "model.use_sequences=true",
        "sequence_length=50",  # whole episodes: one sequence each, from the episode start
        "max_epochs=40",
        "batch_size=8",
    )
    served = load_runner(onnx_path, device="cpu")
    assert isinstance(served, OnnxPolicy) and served.model_type == "actor"
    meta = served.metadata
    assert (meta.obs_steps, meta.horizon, meta.n_action_steps) == (1, 1, 1)
    assert {k: s.shape for k, s in meta.state.items()} == {"h": (1, 128), "c": (1, 128)}
    assert parity(model, onnx_path) <= 1e-4  # one step, random observations and state

    # Closed loop over one episode: onnxruntime acts, torch steps the same observations with
    # its own carried state; a model fed a fresh state every step acts differently.
    env, in_process = sim.make(ENV), _RecurrentTorchPolicy(model)
    obs, _ = env.reset(seed=EVAL_SEED)
    served.reset()
    worst, memory_effect, done = 0.0, 0.0, False
    while not done:
        action = served.select_action(obs)
        worst = max(worst, float(np.abs(action - in_process.select_action(obs)).max()))
        fresh = _RecurrentTorchPolicy(model).select_action(obs)
        memory_effect = max(memory_effect, float(np.abs(action - fresh).max()))
        obs, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    env.close()
    assert worst <= 1e-4 and memory_effect > 1e-3, (worst, memory_effect)

    exported, torch_return = _evaluate(served), _evaluate(_RecurrentTorchPolicy(model))
    assert exported.mean_return > RETURN_BAR, exported.returns
    np.testing.assert_allclose(exported.returns, torch_return.returns, atol=1e-3)


def test_sequences_longer_than_every_episode_are_one_line(demos: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "train_bc",
        [f"dataset={demos}", f"output_root={tmp_path}", *QUIET, "model.use_sequences=true"]
        + ["sequence_length=60"],
    )
    with pytest.raises(DatasetError, match="sequence_length 60 is longer than every") as err:
        run(cfg)
    assert "\n" not in str(err.value) and str(demos) in str(err.value)
    assert "longest 50 steps" in str(err.value)


def test_lstm_on_windows_is_one_line(demos: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "train_bc",
        [f"dataset={demos}", f"output_root={tmp_path}", *QUIET, "model.use_sequences=true"]
        + ["data.sequence_length=null"],
    )
    with pytest.raises(ConfigError, match="^model.use_sequences=true trains on sequences"):
        run(cfg)
