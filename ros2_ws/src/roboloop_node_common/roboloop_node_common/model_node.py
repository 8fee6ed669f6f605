"""The skeleton of a lifecycle node that hosts an exported model.

The policy node, q_scorer and the goal generator are `ModelNode`s; a later model-hosting node
(a world model) overrides the same hooks and gets the rest:

    @dataclass(frozen=True)
    class ScorerParams(ModelParams):          # + the node's own parameters
        request_topic: str

    class QScorerNode(ModelNode):
        NAME, WHAT = "q_scorer", "q_scorer"    # node name; name of its diagnostic status
        PARAMETERS = {**model_parameters("ONNX Q-function"), "request_topic": ("~/request", "")}
        Params = ScorerParams

        def load(self, params) -> OnnxModel: ...       # configure: load, validate, keep
        def configured(self, params) -> str: ...       # publishers; the line logged
        def start(self, params) -> None: ...           # activate: subscriptions, timers
        def stop(self) -> None: ...                    # deactivate (and shutdown): idempotent
        def release(self) -> None: ...                 # cleanup/shutdown: the rest
        def status(self, values, level, message): ...  # own diagnostic values and level

    def main(args=None) -> int:
        return run_node(QScorerNode, args)

What the skeleton does, the same way for every model node:
- parameters: declared once from the table (with descriptions), read into the frozen `Params`
  dataclass at construction and at each configure (`runtime.TableParameters`, as the recorder
  and the sim bridge do), so a parameter set while the node is unconfigured (e.g. a corrected
  model_path) takes effect there. Nothing else reads parameters.
- configure: `load` runs; a ModelLoadError / ValueError (or anything else a broken file raises)
  becomes ONE line: logged, the transition fails, the node stays alive and unconfigured, and
  /diagnostics is ERROR with that line until a configure succeeds.
- faults: `self.faults` counts events; `error()` / `warn()` record one and log it throttled.
- diagnostics every `diagnostics_period_s`: lifecycle state, model path, requested device,
  execution provider and any fallback (WARN), the node's own values, every fault counter.
- `lock` serializes data-path callbacks that take it against stop/release.
Model output checks are the runtime's `check_output` (via each node's ROS-free logic) and the
policy node's stale-observation watchdog is its `PolicyLoop`: ROS-free and unit-tested there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from episode_dataset.ranges import count, number
from roboloop_node_common.faults import ERROR, OK, WARN, FaultLog
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    ParameterTable,
    TableParameters,
    check_topic_parameters,
    publish_status,
)
from roboloop_runtime import ModelLoadError, OnnxModel


def model_parameters(model_help: str, inference_threads: int = 1) -> dict[str, tuple[Any, ...]]:
    """The parameters every model node has (name -> (default, description))."""
    return {
        "model_path": ("", model_help),
        "device": ("auto", "onnxruntime device: auto | cpu | cuda (fallbacks are reported)"),
        "inference_threads": (
            inference_threads,
            "onnxruntime intra-op threads (0: onnxruntime default)",
            count(0, high=1024),
        ),
        "error_hold_s": (
            10.0,
            "diagnostics stay ERROR (WARN) this long after the last one",
            number(0, 86400),
        ),
        "diagnostics_period_s": (1.0, "period of /diagnostics messages", number(0.01, 3600)),
        "autostart": (True, "configure and activate at startup (no lifecycle manager needed)"),
    }


@dataclass(frozen=True)
class ModelParams:
    """The values of `model_parameters`; a node's Params dataclass adds its own."""

    model_path: str
    device: str
    inference_threads: int
    error_hold_s: float
    diagnostics_period_s: float
    autostart: bool


class ModelNode(TableParameters, LifecycleNode):
    """Lifecycle, configure failures, faults and diagnostics of a model-hosting node."""

    NAME: ClassVar[str]
    WHAT: ClassVar[str]  # the diagnostic status is named "<node>: <WHAT>"
    PARAMETERS: ClassVar[ParameterTable]
    Params: ClassVar[type[ModelParams]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.NAME, **kwargs)
        self.declare_params()
        self.autostart = self.params.autostart
        self.lock = threading.Lock()  # data path vs lifecycle transitions
        self.lifecycle = "unconfigured"
        self.model: OnnxModel | None = None  # set by a successful configure
        self.configure_error = ""  # a condition: ERROR for as long as it holds
        self.faults = FaultLog(self.params.error_hold_s)  # events: ERROR/WARN while recent
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(  # wall time: a paused sim clock still reports
            self.params.diagnostics_period_s,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    # ---- hooks ----------------------------------------------------------------------------
    def load(self, params: Any) -> OnnxModel:
        """Configure: load and validate the model, keep what the node needs; return the
        ONNX model (provider diagnostics). Raise ModelLoadError/ValueError with one line."""
        raise NotImplementedError

    def configured(self, params: Any) -> str:
        """After a successful load: create publishers; return the summary that is logged."""
        return f"configured {params.model_path} on {self.model.provider}"

    def start(self, params: Any) -> None:
        """Activate: start the data path (subscriptions, timers, worker threads)."""

    def stop(self) -> None:
        """Deactivate and shutdown: stop the data path; must be idempotent."""

    def release(self) -> None:
        """Cleanup and shutdown: drop publishers and what `load` kept."""

    def status(self, values: dict[str, str], level: int, message: str) -> tuple[int, str]:
        """Add the node's diagnostic values; return its (level, message) (given: the model's)."""
        return level, message

    # ---- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.reload_params()
        self.faults.hold_s = params.error_hold_s
        try:
            check_topic_parameters(params)
            if not params.model_path:
                raise ValueError("parameter model_path is empty")
            model = self.load(params)
        except (ModelLoadError, ValueError) as err:  # ModelOutputError is a ValueError too
            return self._configure_failed(str(err))
        except Exception as err:  # anything else a broken model file can raise
            return self._configure_failed(f"{params.model_path}: {type(err).__name__}: {err}")
        self.model = model
        try:
            summary = self.configured(params)
        except Exception as err:  # a failing hook must not leave the node silently unconfigured
            self._release()
            return self._configure_failed(f"{params.model_path}: {type(err).__name__}: {err}")
        self.configure_error = ""
        self.get_logger().info(summary)
        self.lifecycle = "inactive"
        return super().on_configure(state)

    def _configure_failed(self, error: str) -> TransitionCallbackReturn:
        self.configure_error = error
        self.faults.record("configure_failures", error, ERROR)
        self.get_logger().error(f"configure failed: {error}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # lifecycle publishers first, then the data path
        with self.lock:
            self.start(self.params)
        self.lifecycle = "active"
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self.stop()
        self.lifecycle = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.lifecycle = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self.stop()
        self._release()
        self.lifecycle = "finalized"
        return super().on_shutdown(state)

    def _release(self) -> None:
        with self.lock:
            self.release()
            self.model = None

    def bring_up(self) -> None:
        """autostart: configure, then activate if configuring worked."""
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # ---- faults and diagnostics -----------------------------------------------------------
    def error(self, counter: str, text: str) -> None:
        self.faults.record(counter, text, ERROR)
        self.get_logger().error(text, throttle_duration_sec=5.0)

    def warn(self, counter: str, text: str) -> None:
        self.faults.record(counter, text, WARN)
        self.get_logger().warning(text, throttle_duration_sec=5.0)

    def _publish_diagnostics(self) -> None:
        values: dict[str, str] = {"lifecycle_state": self.lifecycle}
        level, message = OK, self.lifecycle
        model = self.model
        if model is not None:
            values.update(
                model_path=self.params.model_path,
                requested_device=self.params.device,
                execution_provider=model.provider,
                provider_fallback_reason=model.fallback_reason or "",
            )
            if model.fallback_reason:
                level, message = WARN, f"running on {model.provider}"
        level, message = self.status(values, level, message)
        values.update(self.faults.values())
        worst, message = self.faults.status(level, message, self.configure_error)
        hardware_id = self.params.model_path if model is not None else ""
        publish_status(
            self, self._diag_pub, self.WHAT, bytes([worst]), message, values, hardware_id
        )
