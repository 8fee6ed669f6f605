"""ONNX export: contract metadata, onnxruntime vs torch parity, Torch/Onnx policies agree."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from test_learning_data import IMG, STATE_DIM, write_toy_dataset

from episode_dataset import EpisodeReader
from learning import export
from learning.checkpoint import load_model
from learning.torch_policy import TorchPolicy
from learning.train import compose_config, run
from roboloop_runtime import OnnxModel, OnnxPolicy, Policy

OBS_STEPS, HORIZON, N_ACT = 2, 4, 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("export")
    data = write_toy_dataset(tmp / "img.hdf5", episodes=6, image=True)
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={data}",
            f"output_root={tmp}",
            "max_epochs=1",
            f"obs_steps={OBS_STEPS}",
            f"horizon_length={HORIZON}",
            f"n_action_steps={N_ACT}",
            "model.network.hidden_dims=[32,32]",
            "model.encoder.image_encoder.channels=[4,8]",
            "~trainer.callbacks.progress_bar",
        ],
    )
    result = run(cfg)
    onnx_path = tmp / "policy.onnx"
    export.main(["--ckpt", str(result["last_ckpt"]), "--out", str(onnx_path)])  # with parity
    return {"ckpt": result["last_ckpt"], "onnx": onnx_path, "tmp": tmp}


def test_metadata_follows_contract(trained: dict) -> None:
    props = {p.key: p.value for p in onnx.load(str(trained["onnx"])).metadata_props}
    meta = json.loads(props["roboloop"])
    assert meta["format_version"] == 2 and meta["model_type"] == "policy"
    assert meta["inputs"] == {
        "obs.image": {"shape": [-1, OBS_STEPS, *IMG], "dtype": "uint8"},
        "obs.state": {"shape": [-1, OBS_STEPS, STATE_DIM], "dtype": "float32"},
        "noise": {"shape": [-1, HORIZON, 2], "dtype": "float32"},
    }
    assert meta["outputs"] == {"actions": {"shape": [-1, HORIZON, 2], "dtype": "float32"}}
    assert meta["observations"] == {
        "state": {"shape": [STATE_DIM], "dtype": "float32", "feature_type": "low_dim"},
        "image": {"shape": list(IMG), "dtype": "uint8", "feature_type": "image"},
    }
    assert (meta["obs_steps"], meta["horizon"], meta["n_action_steps"]) == (2, 4, 3)
    assert meta["action_dim"] == 2 and meta["control_rate_hz"] == 20.0
    assert meta["sampler"] == {"type": "euler", "steps": 10}
    # No action space in the toy env_args: the range of the dataset's actions.
    with EpisodeReader(trained["tmp"] / "img.hdf5") as data:
        actions = np.concatenate([data.read_actions(ep) for ep in data.episodes])
    assert meta["action_bounds"] == {
        "low": actions.min(0).tolist(),
        "high": actions.max(0).tolist(),
        "source": "data",
    }
    assert meta["normalization"]["baked"] is True
    assert set(meta["normalization"]["stats"]) == {"state", "image", "actions"}
    assert meta["training_config"]["model"]["_target_"].endswith("FlowBC")
    assert meta["code_version"]
    # Graph inputs have a symbolic (dynamic) batch axis.
    graph = onnx.load(str(trained["onnx"])).graph
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param, value.name


def test_parity_onnxruntime_vs_torch(trained: dict) -> None:
    model, _ = load_model(trained["ckpt"])
    assert export.parity(model, trained["onnx"], batch_sizes=(1, 7)) <= 1e-4


def test_onnx_and_torch_policies_act_alike(trained: dict) -> None:
    torch_policy = TorchPolicy.from_checkpoint(trained["ckpt"], seed=3)
    onnx_policy = OnnxPolicy(trained["onnx"], device="cpu", seed=3)
    assert torch_policy.metadata == onnx_policy.metadata
    assert isinstance(torch_policy, Policy) and isinstance(onnx_policy, Policy)
    rng = np.random.default_rng(0)
    for step in range(5):
        obs = {
            "state": rng.normal(size=STATE_DIM).astype(np.float32),
            "image": rng.integers(0, 256, size=IMG, dtype=np.uint8),
        }
        a_t, a_o = torch_policy.select_action(obs), onnx_policy.select_action(obs)
        assert a_o.shape == (2,)
        np.testing.assert_allclose(a_o, a_t, atol=1e-4, err_msg=f"step {step}")
    # Normalization is baked in: actions come out in dataset units (|a| <= ~1 here), and
    # depend on the observation.
    runner = OnnxModel(trained["onnx"], device="cpu")
    feeds = export.random_feeds(runner.metadata, 7)
    feeds["noise"][:] = 0
    acts = runner.run(feeds)["actions"]
    assert acts.shape == (7, HORIZON, 2) and np.abs(acts).max() < 5
    assert np.ptp(acts[:, 0, 0]) > 0


def test_export_cli_rejects_bad_args(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--ckpt", str(trained["ckpt"])], "the following arguments are required: --out"),
        (["ckpt=a", "out=b"], "required: --ckpt, --out"),  # the old key=value style
        (["--ckpt", "a", "--out", "b", "--sampler", "steps"], "'steps' is not KEY=VALUE"),
    ):
        with pytest.raises(SystemExit) as exit_:
            export.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    out = str(trained["tmp"] / "x.onnx")
    with pytest.raises(SystemExit, match="nope.ckpt: no such checkpoint"):
        export.main(["--ckpt", str(trained["tmp"] / "nope.ckpt"), "--out", out])
    garbage = trained["tmp"] / "garbage.ckpt"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit, match="garbage.ckpt: not a readable torch checkpoint"):
        export.main(["--ckpt", str(garbage), "--out", out])
    foreign = trained["tmp"] / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(SystemExit, match="foreign.ckpt: checkpoint has no 'roboloop_config'"):
        export.main(["--ckpt", str(foreign), "--out", out])
    # A family option on a model of another type is one line, nothing written.
    with pytest.raises(SystemExit, match="option 'mask_size' does not apply to a policy"):
        export.main(["--ckpt", str(trained["ckpt"]), "--out", out, "--mask-size", "8", "8"])
    assert not (trained["tmp"] / "x.onnx").exists()
    with pytest.raises(SystemExit, match=r"--out .* is a directory; name the .onnx file$"):
        export.main(["--ckpt", str(trained["ckpt"]), "--out", str(trained["tmp"])])


def test_a_model_that_does_not_fit_on_disk_leaves_no_file(trained: dict) -> None:
    """A full disk (a file-size limit stands in) mid-write: one line, and no half-written
    model at --out for a node to load."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    out = trained["tmp"] / "full" / "policy.onnx"

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = subprocess.run(
        [sys.executable, "-m", "learning.export", "--ckpt", str(trained["ckpt"]), "--out",
         str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=limited,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"learning.export: {out}: cannot write it (File too large)"
    )
    assert list(out.parent.iterdir()) == []
    with pytest.raises(SystemExit, match=r"x.onnx: cannot write it \(File exists: .*last.ckpt\)$"):
        export.main(
            ["--ckpt", str(trained["ckpt"]), "--out", str(Path(trained["ckpt"]) / "x.onnx")]
        )
