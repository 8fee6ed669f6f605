"""Contract v2: every model type exports through `learning.export` and runs in the runtime.

One tiny torch model per type (deterministic actor, critic, critic ensemble, best-of-N,
stateful actor) goes through `export_model` (metadata built and checked by the contract's
MODEL_TYPES) and the torch-free runner, compared with torch on random inputs. The v1 files in
tests/data/v1_models (written before v2) still load and give their recorded numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from learning.export import ExportError, export_model, parity
from roboloop_runtime import (
    MODEL_TYPES,
    ModelInputError,
    ModelLoadError,
    ObsSpec,
    OnnxCritic,
    OnnxModel,
    OnnxPolicy,
    PolicyMetadata,
    build_metadata,
    load_runner,
)

V1 = Path(__file__).parent / "data" / "v1_models"
STEPS, DIM, IMG, HORIZON, ACT = 2, 3, (4, 4, 3), 4, 2
OBS = {
    "state": {"shape": [DIM], "dtype": "float32", "feature_type": "low_dim"},
    "image": {"shape": list(IMG), "dtype": "uint8", "feature_type": "image"},
}


def _examples(batch: int = 2) -> dict[str, torch.Tensor]:
    return {
        "obs.state": torch.zeros(batch, STEPS, DIM),
        "obs.image": torch.zeros(batch, STEPS, *IMG, dtype=torch.uint8),
    }


def _acting_fields(**extra: Any) -> dict[str, Any]:
    return {
        "observations": OBS,
        "obs_steps": STEPS,
        "action_dim": ACT,
        "horizon": HORIZON,
        "n_action_steps": 2,
        "control_rate_hz": 20.0,
        "action_bounds": {"low": [-5.0] * ACT, "high": [5.0] * ACT, "source": "env"},
        "normalization": {"baked": True, "stats": {}},
        **extra,
    }


class Features(nn.Module):
    """obs.state (B, T, D) float, obs.image (B, T, H, W, 3) uint8 -> (B, F) features."""

    def __init__(self, out: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(STEPS * DIM + 1, out)

    def forward(self, state: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        brightness = image[:, -1].float().mean(dim=(1, 2, 3)) / 255.0
        return torch.tanh(self.linear(torch.cat([state.flatten(1), brightness[:, None]], 1)))


class Actor(nn.Module):
    """Deterministic: obs -> actions (B, horizon, A); no noise input."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.head = Features(), nn.Linear(8, HORIZON * ACT)

    def forward(self, state: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(state, image)).view(-1, HORIZON, ACT)

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        return self, _examples(), ["actions"]

    def export_metadata(self) -> dict[str, Any]:
        return {"model_type": "actor", **_acting_fields()}


class Critic(nn.Module):
    """obs + action chunk (B, horizon, A) -> q (B,), or (B, K) for K heads."""

    def __init__(self, heads: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.features = Features()
        self.q = nn.Linear(8 + HORIZON * ACT, heads or 1)

    def forward(self, state: torch.Tensor, image: torch.Tensor, actions: torch.Tensor):
        q = self.q(torch.cat([self.features(state, image), actions.flatten(1)], 1))
        return q if self.heads else q[:, 0]

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        return self, {**_examples(), "actions": torch.zeros(2, HORIZON, ACT)}, ["q"]

    def export_metadata(self) -> dict[str, Any]:
        kind = {"model_type": "critic_ensemble", "ensemble_size": self.heads}
        fields = {"observations": OBS, "obs_steps": STEPS, "horizon": HORIZON, "action_dim": ACT}
        return {**(kind if self.heads else {"model_type": "critic"}), **fields}


class BestOfN(nn.Module):
    """Sampler + critic + argmax in one graph: noise (B, N, horizon, A) -> the best candidate."""

    def __init__(self, n: int = 5) -> None:
        super().__init__()
        self.n = n
        self.features, self.shift = Features(), nn.Linear(8, HORIZON * ACT)
        self.critic = Critic()

    def forward(self, state: torch.Tensor, image: torch.Tensor, noise: torch.Tensor):
        b = state.shape[0]
        mean = self.shift(self.features(state, image)).view(b, 1, HORIZON, ACT)
        candidates = mean + 0.5 * noise  # (B, N, H, A): the sampler
        rep = [t[:, None].expand(b, self.n, *t.shape[1:]).flatten(0, 1) for t in (state, image)]
        q = self.critic(*rep, candidates.flatten(0, 1)).view(b, self.n)  # (B, N)
        best = q.argmax(dim=1)  # (B,)
        index = best[:, None, None, None].expand(b, 1, HORIZON, ACT)
        return candidates.gather(1, index)[:, 0], q.gather(1, best[:, None])[:, 0]

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        return (
            self,
            {**_examples(), "noise": torch.zeros(2, self.n, HORIZON, ACT)},
            [
                "actions",
                "q",
            ],
        )

    def export_metadata(self) -> dict[str, Any]:
        return {"model_type": "best_of_n", **_acting_fields(num_samples=self.n)}


class RecurrentActor(nn.Module):
    """Stateful: h' = tanh(W [obs, h]); actions from h'. h starts at 0.5 each episode."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.cell = Features(), nn.Linear(8 + 6, 6)
        self.head = nn.Linear(6, HORIZON * ACT)

    def forward(self, state: torch.Tensor, image: torch.Tensor, h: torch.Tensor):
        h = torch.tanh(self.cell(torch.cat([self.features(state, image), h], 1)))
        return self.head(h).view(-1, HORIZON, ACT), h

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        example = {**_examples(), "state_in.h": torch.zeros(2, 6)}
        return self, example, ["actions", "state_out.h"]

    def export_metadata(self) -> dict[str, Any]:
        state = {"h": {"shape": [6], "dtype": "float32", "initial": 0.5}}
        return {"model_type": "actor", **_acting_fields(state=state)}


def _obs(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    return {
        "state": rng.normal(size=(batch, STEPS, DIM)).astype(np.float32),
        "image": rng.integers(0, 256, size=(batch, STEPS, *IMG), dtype=np.uint8),
    }


def _torch(obs: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(obs["state"]), torch.from_numpy(obs["image"])]


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)


def test_registry_lists_every_model_type() -> None:
    assert set(MODEL_TYPES) == {
        "policy",
        "actor",
        "best_of_n",
        "critic",
        "critic_ensemble",
        "goal_generator",
        "q_function",
        "world_model",
    }
    assert {k for k, t in MODEL_TYPES.items() if t.acting} == {"policy", "actor", "best_of_n"}


def test_deterministic_actor_has_no_noise_input(tmp_path: Path, seeded: None) -> None:
    actor = Actor().eval()
    meta = export_model(actor, tmp_path / "actor.onnx", {"name": "tiny"})
    assert set(meta["inputs"]) == {"obs.state", "obs.image"}  # no noise
    assert meta["observations"]["image"]["feature_type"] == "image"
    assert parity(actor, tmp_path / "actor.onnx") <= 1e-5
    policy = OnnxPolicy(tmp_path / "actor.onnx", device="cpu")
    assert policy.metadata.noise_shape is None
    obs = _obs(np.random.default_rng(1), 3)
    with torch.no_grad():
        ref = actor(*_torch(obs)).numpy()
    np.testing.assert_allclose(policy.predict_action_chunk(obs), ref, atol=1e-5)
    # Deterministic: two policies with different seeds act identically.
    other = OnnxPolicy(tmp_path / "actor.onnx", device="cpu", seed=7)
    frame = {k: v[0, -1] for k, v in obs.items()}
    np.testing.assert_array_equal(policy.select_action(frame), other.select_action(frame))


@pytest.mark.parametrize("heads", [None, 3])
def test_critic_and_ensemble_score_observation_and_chunk(
    tmp_path: Path, seeded: None, heads: int | None
) -> None:
    critic = Critic(heads).eval()
    meta = export_model(critic, tmp_path / "critic.onnx")
    assert meta["outputs"]["q"]["shape"] == ([-1] if heads is None else [-1, heads])
    runner = load_runner(tmp_path / "critic.onnx", device="cpu")
    assert isinstance(runner, OnnxCritic)
    rng = np.random.default_rng(2)
    obs = _obs(rng, 5)
    actions = rng.normal(size=(5, HORIZON, ACT)).astype(np.float32)
    q = runner.q({**obs, "state": obs["state"].astype(np.float64)}, actions)  # same-kind cast
    with torch.no_grad():
        ref = critic(*_torch(obs), torch.from_numpy(actions)).numpy()
    assert q.shape == ((5,) if heads is None else (5, heads))
    np.testing.assert_allclose(q, ref, atol=1e-5)
    with pytest.raises(ModelLoadError, match="is not a policy"):
        OnnxPolicy(tmp_path / "critic.onnx", device="cpu")


def test_best_of_n_selects_inside_the_graph(tmp_path: Path, seeded: None) -> None:
    model = BestOfN(n=5).eval()
    meta = export_model(model, tmp_path / "bon.onnx")
    assert meta["inputs"]["noise"]["shape"] == [-1, 5, HORIZON, ACT]
    assert meta["outputs"]["q"]["shape"] == [-1]
    assert parity(model, tmp_path / "bon.onnx") <= 1e-5
    policy = OnnxPolicy(tmp_path / "bon.onnx", device="cpu", seed=3)
    assert policy.metadata.noise_shape == (5, HORIZON, ACT)
    obs = _obs(np.random.default_rng(3), 2)
    noise = np.random.default_rng(4).standard_normal((2, 5, HORIZON, ACT), dtype=np.float32)
    out = policy.run({"obs.state": obs["state"], "obs.image": obs["image"], "noise": noise})
    with torch.no_grad():
        actions, q = model(*_torch(obs), torch.from_numpy(noise))
    np.testing.assert_allclose(out["actions"], actions.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["q"], q.numpy(), atol=1e-5)
    # The chunk call takes the caller's (B, N, horizon, A) noise and refuses a chunk's shape.
    chunk = policy.predict_action_chunk(obs, noise)
    np.testing.assert_allclose(chunk, actions.numpy(), atol=1e-5)
    with pytest.raises(ModelInputError, match="input 'noise'"):
        policy.predict_action_chunk(obs, noise[:, 0])
    # Acting draws (N, horizon, A) noise per step and keeps the chosen candidate's value.
    action = policy.select_action({k: v[0, -1] for k, v in obs.items()})
    assert action.shape == (ACT,) and policy.last_outputs["q"].shape == (1,)


def test_stateful_actor_carries_state_between_calls(tmp_path: Path, seeded: None) -> None:
    model = RecurrentActor().eval()
    meta = export_model(model, tmp_path / "rnn.onnx")
    assert meta["inputs"]["state_in.h"] == {"shape": [-1, 6], "dtype": "float32"}
    assert meta["state"]["h"]["initial"] == 0.5
    policy = OnnxPolicy(tmp_path / "rnn.onnx", device="cpu", n_action_steps=1)
    rng = np.random.default_rng(5)
    frames = [{k: v[0, -1] for k, v in _obs(rng, 1).items()} for _ in range(4)]

    def torch_rollout() -> list[np.ndarray]:
        h, history, actions = torch.full((1, 6), 0.5), None, []
        for frame in frames:
            new = {k: torch.from_numpy(v)[None, None] for k, v in frame.items()}
            if history is None:  # episode start: the first frame repeated
                history = {k: v.repeat(1, STEPS, *[1] * (v.ndim - 2)) for k, v in new.items()}
            else:
                history = {k: torch.cat([history[k][:, 1:], new[k]], 1) for k in new}
            with torch.no_grad():
                chunk, h = model(history["state"], history["image"], h)
            actions.append(chunk[0, 0].numpy())
        return actions

    expected = torch_rollout()
    for _episode in range(2):  # reset() restores the declared initial state
        policy.reset()
        got = [policy.select_action(frame) for frame in frames]
        np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=1e-5)
    # Same frame, different carried state: the action changes (the state is really fed).
    assert not np.allclose(expected[0], policy.select_action(frames[0]), atol=1e-4)


def test_graph_that_contradicts_its_type_is_not_exported(tmp_path: Path, seeded: None) -> None:
    class NoisyActor(Actor):  # declares a deterministic actor but takes a noise input
        def forward(self, state, image, noise):  # noqa: ANN001, ANN202
            return super().forward(state, image) + noise

        def export_graph(self):  # noqa: ANN202
            return self, {**_examples(), "noise": torch.zeros(2, HORIZON, ACT)}, ["actions"]

    with pytest.raises(ExportError, match="actor metadata inputs have 'noise', not one of"):
        export_model(NoisyActor().eval(), tmp_path / "noisy.onnx")
    assert not (tmp_path / "noisy.onnx").exists()


def test_metadata_declares_feature_types_never_guesses() -> None:
    fields = _acting_fields()
    fields["observations"] = {"state": {"shape": [DIM], "dtype": "float32"}}
    with pytest.raises(ValueError, match="declares no feature_type"):
        build_metadata("actor", fields)
    with pytest.raises(ValueError, match="feature_type 'pixels' is not one of"):
        ObsSpec((DIM,), "float32", "pixels")
    state = {"h": {"shape": [6], "dtype": "float32", "initial": [1.0, 2.0]}}
    with pytest.raises(ValueError, match=r"state 'h': state initial value has shape \(2,\)"):
        build_metadata("actor", _acting_fields(state=state))
    with pytest.raises(ValueError, match="model_type 'critic' is not a policy"):
        PolicyMetadata.from_dict({"model_type": "critic", **_acting_fields()})


@pytest.mark.parametrize("name", ["flow_policy_v1", "q_function_v1", "goal_generator_v1"])
def test_v1_files_still_load_and_give_their_numbers(name: str) -> None:
    expected = np.load(V1 / "expected_outputs.npz")
    model = OnnxModel(V1 / f"{name}.onnx", device="cpu")
    assert model.metadata["upgraded_from"] == 1 and model.metadata["format_version"] == 2
    arrays = {k.split("/", 1)[1]: expected[k] for k in expected.files if k.startswith(name)}
    feeds = {k: v for k, v in arrays.items() if k in model.metadata["inputs"]}
    out = model.run(feeds)
    for key in model.metadata["outputs"]:
        np.testing.assert_allclose(out[key], arrays[key], atol=1e-6, err_msg=key)


def test_v1_upgrade_rule_gives_feature_types_and_the_policy_acts() -> None:
    policy = OnnxPolicy(V1 / "flow_policy_v1.onnx", device="cpu", seed=0)
    types = {k: s.feature_type for k, s in policy.metadata.observations.items()}
    assert types == {"image": "image", "state": "low_dim"}  # v1 rule: uint8 -> image
    generator = OnnxModel(V1 / "goal_generator_v1.onnx", device="cpu").metadata
    assert {s["feature_type"] for s in generator["observations"].values()} == {"image"}
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs = {
            "state": rng.normal(size=4).astype(np.float32),
            "image": rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8),
        }
        action = policy.select_action(obs)
        assert action.shape == (2,) and np.isfinite(action).all()


def test_a_graph_that_fixes_the_batch_size_is_refused(tmp_path: Path, seeded: None) -> None:
    class FixedBatch(Actor):  # .view(2, ...) specializes the batch: torch.onnx would trace it
        def forward(self, state, image):  # noqa: ANN001, ANN202
            return super().forward(state, image).view(2, HORIZON, ACT)

    with pytest.raises(ExportError, match="fixed the batch axis of 'obs.state' to 2"):
        export_model(FixedBatch().eval(), tmp_path / "fixed.onnx")
    assert not (tmp_path / "fixed.onnx").exists()
