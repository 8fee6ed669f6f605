"""roboloop_runtime without torch: load errors, input checks, providers, action queue."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from roboloop_runtime import (
    ModelInputError,
    ModelLoadError,
    ModelOutputError,
    OnnxModel,
    OnnxPolicy,
    Policy,
    PolicyMetadata,
)

OBS_STEPS, STATE_DIM, HORIZON, ACT_DIM = 2, 3, 4, 2


def _policy_meta(n_action_steps: int = 3) -> dict:
    return {
        "format_version": 1,
        "model_type": "policy",
        "inputs": {
            "obs.state": {"shape": [-1, OBS_STEPS, STATE_DIM], "dtype": "float32"},
            "noise": {"shape": [-1, HORIZON, ACT_DIM], "dtype": "float32"},
        },
        "outputs": {"actions": {"shape": [-1, HORIZON, ACT_DIM], "dtype": "float32"}},
        "observations": {"state": {"shape": [STATE_DIM], "dtype": "float32"}},
        "obs_steps": OBS_STEPS,
        "action_dim": ACT_DIM,
        "horizon": HORIZON,
        "n_action_steps": n_action_steps,
        "control_rate_hz": 50.0,
        "action_bounds": {"low": [-1.0, -2.0], "high": [1.0, 2.0], "source": "env"},
        "normalization": {
            "baked": True,
            "stats": {
                "state": {"mode": "mean_std", "mean": [0.0, 1.0, 2.0], "std": [1.0, 0.0, 4.0]},
                "actions": {"mode": "min_max", "min": [-1.0, -2.0], "max": [1.0, 2.0]},
            },
        },
        "sampler": {"type": "euler", "steps": 10},
        "training_config": {},
        "code_version": "unknown",
    }


def write_toy_policy(path: Path, meta: dict | None = None, with_meta: bool = True) -> Path:
    """actions[b, h, a] = noise[b, h, a] + mean(obs.state[b, -1, :]): easy to predict."""
    f32 = TensorProto.FLOAT
    obs = helper.make_tensor_value_info("obs.state", f32, ["B", OBS_STEPS, STATE_DIM])
    noise = helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", HORIZON, ACT_DIM])
    out = helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", HORIZON, ACT_DIM])
    nodes = [
        helper.make_node("Constant", [], ["idx"], value=helper.make_tensor("i", 7, [1], [-1])),
        helper.make_node("Gather", ["obs.state", "idx"], ["last"], axis=1),  # (B, 1, D)
        helper.make_node("ReduceMean", ["last"], ["m"], axes=[2], keepdims=1),  # (B, 1, 1)
        helper.make_node("Add", ["noise", "m"], ["actions"]),
    ]
    graph = helper.make_graph(nodes, "toy", [obs, noise], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if with_meta:
        helper.set_model_props(model, {"roboloop": json.dumps(meta or _policy_meta())})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_toy_policy(tmp_path / "toy.onnx")


def test_run_and_metadata(toy: Path) -> None:
    model = OnnxModel(toy, device="cpu", threads=1)
    assert model.metadata["horizon"] == HORIZON
    assert model.provider == "CPUExecutionProvider" and model.fallback_reason is None
    for b in (1, 7):
        obs = np.random.default_rng(b).normal(size=(b, OBS_STEPS, STATE_DIM)).astype(np.float32)
        noise = np.zeros((b, HORIZON, ACT_DIM), np.float32)
        out = model.run({"obs.state": obs, "noise": noise})["actions"]
        assert out.shape == (b, HORIZON, ACT_DIM)
        np.testing.assert_allclose(out[:, 0, 0], obs[:, -1].mean(-1), atol=1e-6)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model file"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="a directory, not a model file"):
        OnnxModel(tmp_path)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf\xff\xfe" * 10)
    with pytest.raises(ModelLoadError, match="corrupt.onnx: cannot load ONNX model"):
        OnnxModel(corrupt)
    with pytest.raises(ModelLoadError, match="no 'roboloop' metadata"):
        OnnxModel(write_toy_policy(tmp_path / "nometa.onnx", with_meta=False))
    # Strings that are not UTF-8 (a damaged byte): onnxruntime parses the file, and decodes
    # the metadata and the graph's names only when asked (a UnicodeDecodeError, before).
    good = write_toy_policy(tmp_path / "good.onnx").read_bytes()
    for name, (old, new) in {
        "meta": (b'"model_type"', b'"model\xfftype"'),
        "names": (b"noise", b"nois\xff"),  # every reference to the input, so the graph holds
    }.items():
        damaged = tmp_path / f"{name}.onnx"
        damaged.write_bytes(good.replace(old, new))
        with pytest.raises(ModelLoadError, match=f"{name}.onnx: damaged model"):
            OnnxModel(damaged)
    bad = _policy_meta()
    bad["format_version"] = 99
    with pytest.raises(ModelLoadError, match="format_version 99"):
        OnnxModel(write_toy_policy(tmp_path / "v99.onnx", meta=bad))
    unknown = _policy_meta()
    unknown["model_type"] = "no_such_type"
    with pytest.raises(ModelLoadError, match="model_type 'no_such_type' is not one of"):
        OnnxModel(write_toy_policy(tmp_path / "unknown.onnx", meta=unknown))
    # The graph must be what the declared type implies: a policy graph is no actor/critic.
    for model_type, message in {
        "actor": "actor metadata inputs have 'noise', not one of",
        "critic": "critic metadata inputs lack 'actions'",
        "q_function": "q_function metadata is missing key 'state_masks'",
    }.items():
        wrong = _policy_meta()
        wrong["model_type"] = model_type
        with pytest.raises(ModelLoadError, match=message):
            OnnxModel(write_toy_policy(tmp_path / f"{model_type}.onnx", meta=wrong))
    wrong_shape = _policy_meta()
    wrong_shape["inputs"]["noise"]["shape"] = [-1, HORIZON + 1, ACT_DIM]
    with pytest.raises(ModelLoadError, match=r"inputs\['noise'\] is .* imply"):
        OnnxModel(write_toy_policy(tmp_path / "shape.onnx", meta=wrong_shape))


def test_metadata_bounds_and_stats_are_parsed_and_checked(tmp_path: Path) -> None:
    meta = OnnxPolicy(write_toy_policy(tmp_path / "toy.onnx"), device="cpu").metadata
    assert meta.action_bounds.low == (-1.0, -2.0) and meta.action_bounds.source == "env"
    center, scale = meta.observation_affine("state")
    np.testing.assert_array_equal(center, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(scale, [1.0, 1.0, 4.0])  # a zero spread is a constant: 1
    assert PolicyMetadata.from_dict(meta.to_dict()) == meta
    cases = {
        "control_rate_hz 1e+06 Hz is outside (0, 1000] Hz": ("control_rate_hz", 1e6),
        "control_rate_hz -5 Hz": ("control_rate_hz", -5.0),
        "action_dim=0 must be >= 1": ("action_dim", 0),
        "horizon=0 must be >= 1": ("horizon", 0),
        "action_bounds have 3 values, action_dim=2": (
            "action_bounds",
            {"low": [0, 0, 0], "high": [1, 1, 1], "source": "env"},
        ),
        "action_bounds.high has 1 values, expected 2": (
            "action_bounds",
            {"low": [0, 0], "high": [1], "source": "env"},
        ),
        "action_bounds low[1]=3 > high[1]=2": (
            "action_bounds",
            {"low": [0, 3], "high": [1, 2], "source": "env"},
        ),
        "action_bounds.high holds non-finite values": (
            "action_bounds",
            {"low": [0, 0], "high": [1, float("nan")], "source": "data"},
        ),
        "action_bounds.source 'guess'": (
            "action_bounds",
            {"low": [0, 0], "high": [1, 1], "source": "guess"},
        ),
        "stats of 'state': mean_std center holds non-finite values": (
            "normalization",
            {
                "stats": {
                    "state": {"mode": "mean_std", "mean": [0, float("inf"), 0], "std": [1] * 3}
                }
            },
        ),
        "stats of 'actions': min_max stats need min and max": (
            "normalization",
            {"stats": {"actions": {"mode": "min_max", "min": [0, 0]}}},
        ),
    }
    for i, (message, (key, value)) in enumerate(cases.items()):
        bad = {**_policy_meta(), key: value}
        with pytest.raises(ModelLoadError) as err:
            OnnxPolicy(write_toy_policy(tmp_path / f"bad{i}.onnx", meta=bad), device="cpu")
        assert message in str(err.value) and f"bad{i}.onnx" in str(err.value)


def test_input_errors(toy: Path) -> None:
    model = OnnxModel(toy, device="cpu")
    obs = np.zeros((2, OBS_STEPS, STATE_DIM), np.float32)
    noise = np.zeros((2, HORIZON, ACT_DIM), np.float32)
    with pytest.raises(ModelInputError, match="missing input 'noise'"):
        model.run({"obs.state": obs})
    with pytest.raises(ModelInputError, match="unexpected input 'obs.image'"):
        model.run({"obs.state": obs, "noise": noise, "obs.image": obs})
    with pytest.raises(ModelInputError, match=r"input 'obs.state': shape \(2, 2, 4\)"):
        model.run({"obs.state": np.zeros((2, OBS_STEPS, 4), np.float32), "noise": noise})
    with pytest.raises(ModelInputError, match="input 'obs.state': dtype float64"):
        model.run({"obs.state": obs.astype(np.float64), "noise": noise})
    with pytest.raises(ModelInputError, match="input 'noise': batch 3 != batch 2"):
        model.run({"obs.state": obs, "noise": np.zeros((3, HORIZON, ACT_DIM), np.float32)})
    policy = OnnxPolicy(toy, device="cpu")
    with pytest.raises(ModelInputError, match="observation 'state' missing"):
        policy.select_action({"image": np.zeros(3)})
    with pytest.raises(ModelInputError, match=r"observation 'state': shape \(4,\)"):
        policy.select_action({"state": np.zeros(4, np.float32)})


def _spy_on_predict(policy: OnnxPolicy) -> list[dict]:
    calls: list[dict] = []
    inner = policy._predict

    def spy(obs_history: dict, noise: np.ndarray) -> np.ndarray:
        calls.append({k: v.copy() for k, v in obs_history.items()})
        return inner(obs_history, noise)

    policy._predict = spy  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_observation_is_never_acted_on(toy: Path, bad: float) -> None:
    policy = OnnxPolicy(toy, device="cpu", seed=0)
    calls = _spy_on_predict(policy)
    frame = np.array([0.5, bad, 1.0], np.float32)
    # Episode start (a chunk would be predicted from it) and mid-chunk (an action is queued).
    with pytest.raises(ModelInputError, match=r"observation 'state' holds 1 non-finite") as err:
        policy.select_action({"state": frame})
    assert "\n" not in str(err.value) and not calls
    frames = [np.full(STATE_DIM, float(i), np.float32) for i in range(6)]
    reference = OnnxPolicy(toy, device="cpu", seed=0)
    expected = [reference.select_action({"state": f}) for f in frames]
    got = []
    for f in frames:
        got.append(policy.select_action({"state": f}))
        with pytest.raises(ModelInputError, match="non-finite"):
            policy.select_action({"state": frame.astype(np.float64)})  # cast, then checked
    # The refused frames never entered the history: the same actions, the same windows.
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))
    assert [c["state"][0, :, 0].tolist() for c in calls] == [[0.0, 0.0], [2.0, 3.0]]
    window = np.zeros((2, OBS_STEPS, STATE_DIM), np.float32)
    window[1, 0, 2] = bad
    with pytest.raises(ModelInputError, match="observation 'state' holds 1 non-finite"):
        policy.predict_action_chunk({"state": window})
    assert len(calls) == 2


def test_a_nonfinite_action_is_a_model_output_error(toy: Path) -> None:
    """Finite float32 observations whose mean overflows: the toy's actions are Inf."""
    policy = OnnxPolicy(toy, device="cpu", seed=0)
    calls = _spy_on_predict(policy)
    huge = {"state": np.full(STATE_DIM, 3e38, np.float32)}
    for _ in range(2):  # nothing of the rejected chunk is queued: every call predicts again
        with pytest.raises(ModelOutputError, match="model output 'actions' holds 8 non-finite"):
            policy.select_action(huge)
    assert len(calls) == 2
    with pytest.raises(ModelOutputError) as err:
        policy.select_action(huge)
    assert err.value.reason == "nonfinite" and "\n" not in str(err.value)
    policy.reset()
    assert np.isfinite(policy.select_action({"state": np.ones(STATE_DIM, np.float32)})).all()


def test_observation_keys_and_type(toy: Path) -> None:
    policy = OnnxPolicy(toy, device="cpu", seed=0)
    for bare in (np.zeros(STATE_DIM, np.float32), [0.0] * STATE_DIM, None):
        with pytest.raises(ModelInputError, match=r"observation must be a dict of arrays keyed "
                           r"\['state'\], got") as err:  # fmt: skip
            policy.select_action(bare)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
    window = np.zeros((1, OBS_STEPS, STATE_DIM), np.float32)
    with pytest.raises(ModelInputError, match="observation must be a dict"):
        policy.predict_action_chunk(window)  # type: ignore[arg-type]
    # The batched history is the model's input: exactly its keys.
    with pytest.raises(ModelInputError, match=r"unexpected observation 'image' \(the policy "
                       r"takes \['state'\]\)"):  # fmt: skip
        policy.predict_action_chunk({"state": window, "image": window})
    # One env step may observe more than the policy was trained on (data.obs_keys, a camera
    # added for recording): select_action acts on its own keys, the same actions.
    other = OnnxPolicy(toy, device="cpu", seed=0)
    image = np.zeros((8, 8, 3), np.uint8)
    for i in range(4):
        state = np.full(STATE_DIM, float(i), np.float32)
        np.testing.assert_array_equal(
            policy.select_action({"state": state, "image": image}),
            other.select_action({"state": state}),
        )


def test_cuda_request_is_reported_never_silent(toy: Path) -> None:
    import onnxruntime

    model = OnnxModel(toy, device="cuda")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        # Either it runs on CUDA, or the fallback is explained.
        assert model.provider == "CUDAExecutionProvider" or model.fallback_reason
    else:
        assert model.provider == "CPUExecutionProvider"
        assert "CUDAExecutionProvider not available" in model.fallback_reason
    auto = OnnxModel(toy, device="auto")
    assert auto.provider in auto.session.get_providers()


def test_policy_action_queue(toy: Path) -> None:
    policy = OnnxPolicy(toy, device="cpu", seed=0)
    assert isinstance(policy, Policy) and "OnnxPolicy(" in repr(policy)
    calls = _spy_on_predict(policy)
    frames = [np.full(STATE_DIM, float(i), np.float32) for i in range(7)]
    actions = [policy.select_action({"state": f}) for f in frames]
    assert all(a.shape == (ACT_DIM,) and a.dtype == np.float32 for a in actions)
    # n_action_steps=3: a new chunk at steps 0, 3, 6.
    assert len(calls) == 3
    # Episode start pads with the first frame; later histories are the last obs_steps frames.
    np.testing.assert_array_equal(calls[0]["state"][0, :, 0], [0.0, 0.0])
    np.testing.assert_array_equal(calls[1]["state"][0, :, 0], [2.0, 3.0])
    np.testing.assert_array_equal(calls[2]["state"][0, :, 0], [5.0, 6.0])
    # Queued actions come from one chunk: offset by the mean of the frame at query time.
    policy.reset(seed=0)
    calls.clear()
    again = [policy.select_action({"state": f}) for f in frames]
    np.testing.assert_array_equal(np.stack(actions), np.stack(again))  # seeded noise
    rng = np.random.default_rng(0)
    chunk0 = rng.standard_normal((1, HORIZON, ACT_DIM), dtype=np.float32)[0] + 0.0
    np.testing.assert_allclose(np.stack(actions[:3]), chunk0[:3], atol=1e-6)
    # reset() drops the queue and history: the next call predicts again, padded anew.
    policy.select_action({"state": frames[1]})
    policy.reset()
    policy.select_action({"state": frames[4]})
    np.testing.assert_array_equal(calls[-1]["state"][0, :, 0], [4.0, 4.0])
    # predict_action_chunk is batched.
    chunk = policy.predict_action_chunk({"state": np.zeros((5, OBS_STEPS, STATE_DIM))})
    assert chunk.shape == (5, HORIZON, ACT_DIM)


def test_noise_scale_scales_the_sampler_start_points(toy: Path) -> None:
    """The toy's actions are noise + mean(state): the noise part scales; 0 is deterministic."""
    obs = {"state": np.full((1, OBS_STEPS, STATE_DIM), 2.0, np.float32)}
    full = OnnxPolicy(toy, device="cpu", seed=0).predict_action_chunk(obs) - 2.0
    half = OnnxPolicy(toy, device="cpu", seed=0, noise_scale=0.5).predict_action_chunk(obs) - 2.0
    assert np.abs(full).max() > 0.1
    np.testing.assert_allclose(half, 0.5 * full, atol=1e-6)
    zero = OnnxPolicy(toy, device="cpu", seed=3, noise_scale=0.0)
    for _ in range(2):
        np.testing.assert_array_equal(zero.predict_action_chunk(obs), np.full_like(full, 2.0))
    with pytest.raises(ValueError, match=r"noise_scale=-1.0: must be a number >= 0"):
        OnnxPolicy(toy, device="cpu", noise_scale=-1.0)


def test_caller_noise_is_checked_like_an_observation(toy: Path) -> None:
    """Before: a list of noise was an AttributeError ('list' object has no attribute 'shape')
    and NaN noise gave NaN actions."""
    policy = OnnxPolicy(toy, device="cpu")
    obs = {"state": np.zeros((1, OBS_STEPS, STATE_DIM), np.float32)}
    zeros = np.zeros((1, HORIZON, ACT_DIM))
    # A nested list or float64 array of the shape is taken (float32, as drawn noise).
    np.testing.assert_array_equal(policy.predict_action_chunk(obs, zeros.tolist()), zeros)
    nan = zeros.copy()
    nan[0, 1, 0] = np.nan
    for noise, says in (
        (nan, "input 'noise' holds 1 non-finite values (nan): not acted on"),
        (np.full_like(zeros, 1e39), "input 'noise' holds 8 non-finite values (inf)"),  # float32
        ([[0.0], [0.0, 1.0]], "input 'noise': not an array (list)"),
        (zeros.astype(str), "input 'noise': dtype <U32 is not a number type"),
        ([0.0] * HORIZON, "input 'noise': shape (4,) != (1, 4, 2)"),
    ):
        with pytest.raises(ModelInputError, match=re.escape(says)) as err:
            policy.predict_action_chunk(obs, noise)
        assert "\n" not in str(err.value)


def test_numeric_arguments_are_one_line_naming_the_argument(toy: Path) -> None:
    """Before: threads=-1 and True were taken, 1.5 was onnxruntime's 4-line pybind error,
    10**6 hung making threads; n_action_steps=2.7 acted 2 steps; seed=-1 and
    noise_scale=None were numpy's and Python's words, naming no argument."""
    policy = OnnxPolicy(toy, device="cpu")
    for kwargs, says in (
        ({"threads": -1}, "threads=-1: must be an integer in [0, 1024] (or null)"),
        ({"threads": True}, "threads=True: must be"),
        ({"threads": 1.5}, "threads=1.5: must be"),
        ({"n_action_steps": 2.7}, "n_action_steps=2.7: must be an integer >= 1"),
        ({"seed": -1}, "seed=-1: must be an integer in [0, 4294967295]"),
        ({"noise_scale": None}, "noise_scale=None: must be a number >= 0"),
        ({"threads": 10**6}, "threads=1000000: must be"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)) as err:
            OnnxPolicy(toy, device="cpu", **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=re.escape("seed=1.5: must be an integer in [0,")):
        policy.reset(seed=1.5)
    for threads in (None, 0):  # onnxruntime's default
        assert OnnxModel(toy, device="cpu", threads=threads).provider == "CPUExecutionProvider"


def test_runner_is_torch_free() -> None:
    code = (
        "import sys, learning, roboloop_runtime, roboloop_runtime; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
