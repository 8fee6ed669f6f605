"""An exported image FBC served over ROS against the sim bridge's camera.

Two Reacher-v5 episodes with the 64x64 camera (`sim.collect`), a tiny ResNet18 FBC trained a
few steps on the image alone (`data.obs_keys=[image]`: the plumbing, not the skill; that is
`python -m learning.check_reacher --image`), exported with the centre crop in the graph. The
policy node (policy.launch.py) subscribes to /sim/image only and drives sim_bridge
(sim.launch.py, action_source topic) over DDS: its actions arrive, are finite and within the
model's action bounds, the bridge applies them, and /diagnostics names the image input.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from roboloop_bringup.launch_standin import load_launch_file  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
CAMERA = 64  # the bridge's default camera size


def train_image_policy(tmp_path: Path) -> tuple[Path, dict]:
    from learning.export import export_checkpoint
    from learning.train import compose_config, run

    data = tmp_path / "reacher_camera.hdf5"
    collect = [sys.executable, "-m", "sim.collect", "--env", "Reacher-v5", "--policy", "expert"]
    collect += ["--episodes", "2", "--out", str(data), "--camera", str(CAMERA)]
    subprocess.run(collect, check=True, capture_output=True)
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={data}",
            f"output_root={tmp_path}",
            "data.obs_keys=[image]",
            "obs_type=image",
            "rgb_model_name=resnet18",
            "model.encoder.image_encoder.channels=[16,16,16,16]",
            "crop_shape=[56,56]",
            "model.network.hidden_dims=[32]",
            "max_epochs=1",
            "batch_size=32",
            "~trainer.callbacks.progress_bar",
        ],
    )
    onnx_path = tmp_path / "image_policy.onnx"
    meta = export_checkpoint(run(cfg)["last_ckpt"], onnx_path)
    return onnx_path, meta


def test_image_policy_drives_the_sim_bridge(tmp_path: Path, ros_env: dict[str, str]) -> None:
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState

    from roboloop_testing.ros_probe import RosProbe

    model_path, meta = train_image_policy(tmp_path)
    assert sorted(meta["observations"]) == ["image"]
    assert meta["inputs"]["obs.image"]["shape"] == [-1, 2, CAMERA, CAMERA, 3]  # full frames
    low = np.array(meta["action_bounds"]["low"])
    high = np.array(meta["action_bounds"]["high"])

    sim = load_launch_file(REPO / "launch/sim.launch.py", {"action_source": "topic"})
    policy = load_launch_file(
        REPO / "launch/policy.launch.py", {"model_path": str(model_path), "device": "cpu"}
    )
    procs = [
        policy.start(0, log_path=tmp_path / "policy.log", env=ros_env),
        sim.start(0, log_path=tmp_path / "sim.log", env=ros_env),
    ]
    actions: list[np.ndarray] = []
    applied: list[np.ndarray] = []

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)

    try:
        with RosProbe(name="image_loop_observer") as probe:
            probe.watch_diagnostics()
            probe.node.create_subscription(
                JointState,
                "/sim/action",
                lambda m: actions.append(np.array(m.effort)),
                QoSProfile(depth=50),
            )
            probe.node.create_subscription(
                JointState,
                "/sim/applied_action",
                lambda m: applied.append(np.array(m.effort)),
                QoSProfile(depth=50),
            )

            def running() -> bool:
                assert all(p.alive() for p in procs), logs()
                status = probe.status("/policy_node: policy") or {}
                return (
                    sum(a.any() for a in actions) >= 20
                    and sum(a.any() for a in applied) >= 20
                    and int(status.get("inference_count", 0)) >= 10
                )

            try:
                probe.wait_for(running, 120, "20 image-policy actions applied by the sim bridge")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{logs()}") from None
            status = probe.status("/policy_node: policy")
    finally:
        for p in procs:
            p.stop()

    policy_actions = np.array([a for a in actions if a.any()])  # zeros: the safe action
    assert policy_actions.shape[1] == 2 and np.isfinite(policy_actions).all()
    assert (policy_actions >= low - 1e-6).all() and (policy_actions <= high + 1e-6).all()
    assert len({tuple(a) for a in policy_actions}) > 1  # the camera moves the actions
    assert status["observations"] == f"image: image {CAMERA}x{CAMERA}x3 uint8 <- /sim/image"
    assert status["malformed_observations"] == "0"
