"""roboloop_node_common.model_node with real rclpy and onnxruntime: the skeleton's lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from roboloop_node_common.model_node import ModelNode, ModelParams, model_parameters  # noqa: E402
from roboloop_policy.reference_model import make_reference_policy  # noqa: E402

from roboloop_runtime import OnnxModel  # noqa: E402


@dataclass(frozen=True)
class ToyParams(ModelParams):
    label: str


class ToyNode(ModelNode):
    """The smallest model node: loads any roboloop ONNX file; calls recorded."""

    NAME, WHAT, Params = "toy_model_node", "toy", ToyParams
    PARAMETERS = {**model_parameters("any roboloop ONNX file"), "label": ("a", "a string")}

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        self.calls: list[str] = []
        super().__init__(**kwargs)

    def load(self, params: ToyParams) -> OnnxModel:
        self.calls.append(f"load {params.label}")
        return OnnxModel(params.model_path, device="cpu")

    def configured(self, params: ToyParams) -> str:
        self.calls.append("configured")
        if params.label == "broken hook":
            raise KeyError("no publisher for this label")
        return super().configured(params)

    def start(self, params: ToyParams) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")

    def release(self) -> None:
        self.calls.append("release")

    def status(self, values: dict[str, str], level: int, message: str) -> tuple[int, str]:
        values["label"] = self.params.label
        return level, message


def test_configure_failure_is_one_line_and_a_corrected_parameter_recovers(
    ros, tmp_path: Path
) -> None:
    good = tmp_path / "ref.onnx"
    make_reference_policy(good, state_dim=3)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(good.read_bytes()[:100])
    node = ToyNode(context=ros, parameter_overrides=[Parameter("model_path", value=str(broken))])
    try:
        assert node.params.model_path == str(broken) and node.lifecycle == "unconfigured"
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.configure_error.startswith(f"{broken}: cannot load ONNX model")
        assert "\n" not in node.configure_error and node.model is None
        assert node.faults.total("configure_failures") == 1
        assert node.lifecycle == "unconfigured"

        # Parameters are read again at configure: the corrected path and label take effect.
        node.set_parameters(
            [Parameter("model_path", value=str(good)), Parameter("label", value="b")]
        )
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.params.label == "b" and node.configure_error == ""
        assert node.model is not None and node.model.provider == "CPUExecutionProvider"
        node.trigger_activate()
        node.trigger_deactivate()
        node.trigger_cleanup()
        assert node.calls == ["load a", "load b", "configured", "start", "stop", "release"]
        assert node.model is None and node.lifecycle == "unconfigured"
    finally:
        node.destroy_node()


def test_a_failing_configured_hook_is_a_one_line_configure_failure(ros, tmp_path: Path) -> None:
    model = tmp_path / "ref.onnx"
    make_reference_policy(model, state_dim=3)
    node = ToyNode(
        context=ros,
        parameter_overrides=[
            Parameter("model_path", value=str(model)),
            Parameter("label", value="broken hook"),
        ],
    )
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.configure_error == f"{model}: KeyError: 'no publisher for this label'"
        assert node.model is None and node.lifecycle == "unconfigured"
        assert node.calls == ["load broken hook", "configured", "release"]
    finally:
        node.destroy_node()
