"""policy_node as a real process against broken models and absurd observations (issue 8).

One node process is reconfigured through its lifecycle and parameter services across five
models built with reference_model: a graph with 3 action values where the metadata says 2, a
control rate of 1e6 Hz, an export without action bounds (all refused at configure), a model
that outputs NaN when state[0] < 0 (fed ±1e38 observations too), and a constant 1e6 model at
50 Hz fed 20 Hz observations (clipped, rate mismatch). This process publishes the state and
records every action and /diagnostics status: no action may ever be NaN, the wrong length or
out of bounds.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from roboloop_bringup.processes import start_node, wait_until  # noqa: E402
from roboloop_policy.reference_model import make_reference_policy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from roboloop_testing.ros_probe import RosProbe  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

NODE = "policy_safety"
T_STATE, T_ACTION = "/t_safety/state", "/t_safety/action"
STATE_DIM, ACTION_DIM, PUBLISH_HZ = 4, 2, 20.0
STATES = {  # what the test publishes, by mode
    "ok": [0.5, 0.1, -0.2, 0.3],
    "negative": [-1.0, 0.1, -0.2, 0.3],  # the NaN model's trigger
    "huge": [1e38, -1e38, 0.0, 0.0],  # finite, absurd
}


class Client:
    """Publishes the state at 20 Hz, records actions and /diagnostics, calls node services."""

    def __init__(self) -> None:
        self.probe = RosProbe(name="policy_safety_client")
        self.node = self.probe.node
        self.lock = threading.Lock()
        self.mode = "off"
        self.actions: list[tuple[float, str, list[float]]] = []  # (monotonic, phase, effort)
        self.phase = ""
        self.pub = self.node.create_publisher(JointState, T_STATE, qos_profile_sensor_data)
        self.node.create_subscription(JointState, T_ACTION, self._on_action, QoSProfile(depth=50))
        self.node.create_timer(1.0 / PUBLISH_HZ, self._publish)
        self.probe.watch_diagnostics()
        self.probe.spin_in_background()

    def close(self) -> None:
        self.probe.close()

    def _publish(self) -> None:
        if self.mode == "off":
            return
        msg = JointState(position=STATES[self.mode])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)

    def _on_action(self, msg: JointState) -> None:
        with self.lock:
            self.actions.append((time.monotonic(), self.phase, list(msg.effort)))

    def value(self, key: str, default: str = "") -> str:
        return (self.probe.status(f"/{NODE}: policy") or {}).get(key, default)

    def count(self, key: str) -> int:
        return int(self.value(key, "0") or 0)

    def actions_in(self, phase: str) -> list[list[float]]:
        with self.lock:
            return [a for _, p, a in self.actions if p == phase]

    def set_model(self, path: Path) -> None:
        self.probe.set_parameters(f"/{NODE}", timeout=20, model_path=str(path))

    def transition(self, transition_id: int) -> bool:
        return self.probe.change_state(f"/{NODE}", transition_id, timeout=20)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety_models")
    specs = {
        "extra_action": {"fault": "extra_action"},
        "no_bounds": {"action_bounds": None},
        "nan": {"fault": "nan_when_negative", "action_bounds": (-10.0, 10.0)},
        "huge": {"fault": "constant", "control_rate_hz": 50.0, "action_bounds": (-2.0, 3.0)},
    }
    for name, kwargs in specs.items():
        kwargs = {"control_rate_hz": PUBLISH_HZ, **kwargs}
        make_reference_policy(
            root / f"{name}.onnx", state_dim=STATE_DIM, action_dim=ACTION_DIM, **kwargs
        )
    return {name: root / f"{name}.onnx" for name in specs}


def configure_line(proc, model: Path) -> str:
    """The one configure-failure line naming `model`."""
    lines = [
        ln for ln in proc.log_text().splitlines() if "configure failed" in ln and str(model) in ln
    ]
    return lines[-1] if lines else ""


def test_broken_models_and_absurd_observations_never_give_unsafe_actions(
    models: dict[str, Path], tmp_path: Path, ros_env: dict[str, str]
) -> None:
    client = Client()
    proc = start_node(
        "policy_node",
        params={
            "model_path": str(models["extra_action"]),
            "device": "cpu",
            "inference_threads": 1,
            "observation_topics": [T_STATE],
            "observation_keys": ["state"],
            "action_topic": T_ACTION,
            "stale_periods": 5.0,
            "diagnostics_period_s": 0.2,
        },
        log_path=tmp_path / "policy_safety.log",
        env=ros_env,
        node_name=NODE,
    )
    try:
        # 1. Refused at configure, one line each: the graph's output disagrees with the
        # metadata, no action bounds (export predates them). (An absurd control rate cannot be
        # written any more: the contract refuses it at export and at load.)
        refusals = {
            "extra_action": "output 'actions' has shape (1, 1, 3)",
            "no_bounds": "re-export",
        }
        for name, text in refusals.items():
            if name != "extra_action":  # the first model is the one the node started with
                client.set_model(models[name])
                assert not client.transition(Transition.TRANSITION_CONFIGURE)
            wait_until(lambda m=models[name]: configure_line(proc, m), 30, f"{name} refused", proc)
            assert text in configure_line(proc, models[name]), proc.log_text()[-2000:]
        wait_until(
            lambda: str(models["no_bounds"]) in client.value("last_error"), 10, "diag", proc
        )
        assert client.value("_level") == DiagnosticStatus.ERROR

        # 2. NaN outputs -> the safe action and ERROR; ±1e38 observations rejected and counted.
        client.set_model(models["nan"])
        assert client.transition(Transition.TRANSITION_CONFIGURE), proc.log_text()[-2000:]
        assert client.transition(Transition.TRANSITION_ACTIVATE), proc.log_text()[-2000:]
        client.phase, client.mode = "nan_ok", "ok"
        wait_until(lambda: len(client.actions_in("nan_ok")) >= 5, 20, "policy actions", proc)
        assert sum(any(a) for a in client.actions_in("nan_ok")) >= 3  # policy actions
        client.phase, client.mode = "nan_negative", "negative"
        wait_until(
            lambda: client.count("bad_model_output:nonfinite") >= 3, 10, "NaN counted", proc
        )
        wait_until(lambda: client.value("_level") == DiagnosticStatus.ERROR, 5, "ERROR", proc)
        assert "non-finite" in client.value("last_error")
        assert client.actions_in("nan_negative")[-1] == [0.0, 0.0]  # the safe action
        client.phase, client.mode = "nan_huge", "huge"
        key = f"malformed:{T_STATE}:out_of_range"
        wait_until(lambda: client.count(key) >= 3, 10, "out-of-range observations counted", proc)
        assert client.count("malformed_observations") >= client.count(key)
        assert proc.wait_for_log(f"dropped malformed observation: {T_STATE}", 5)

        # 3. A model stuck at 1e6: every action clipped to the bounds, counted, WARN. The model
        # runs at 50 Hz on 20 Hz observations: a warning names both rates.
        client.mode = "off"
        assert client.transition(Transition.TRANSITION_DEACTIVATE)
        assert client.transition(Transition.TRANSITION_CLEANUP)
        client.set_model(models["huge"])
        assert client.transition(Transition.TRANSITION_CONFIGURE), proc.log_text()[-2000:]
        assert client.transition(Transition.TRANSITION_ACTIVATE), proc.log_text()[-2000:]
        client.phase, client.mode = "huge", "ok"
        wait_until(lambda: client.count("actions_clipped") >= 10, 20, "clipped actions", proc)
        wait_until(lambda: client.value("observation_rate_mismatch"), 20, "rate mismatch", proc)
        mismatch = client.value("observation_rate_mismatch")
        measured = re.search(r"arrives at ([\d.]+) Hz but the policy runs at 50 Hz", mismatch)
        assert measured and 10 < float(measured[1]) < 30, mismatch  # published at 20 Hz
        assert proc.wait_for_log("observation rate mismatch: 'state' arrives at", 1)
        assert client.value("_level") in (DiagnosticStatus.WARN, DiagnosticStatus.ERROR)
        huge = [a for a in client.actions_in("huge") if any(a)]
        assert len(huge) >= 10 and all(a == [3.0, 3.0] for a in huge), huge[:5]
    finally:
        client.mode = "off"
        code = proc.stop()
        client.close()
    assert code == 0, proc.log_text()[-2000:]
    # Whatever happened, every action published was finite, 2 values, within [-10, 10].
    effort = [a for _, _, a in client.actions]
    assert effort and all(len(a) == ACTION_DIM for a in effort)
    assert np.isfinite(effort).all() and np.abs(effort).max() <= 10.0
