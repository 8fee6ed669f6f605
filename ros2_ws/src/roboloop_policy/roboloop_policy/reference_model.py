"""A tiny linear policy in the roboloop ONNX contract, for smoke tests and benchmarks.

Its actions are a known function of the observations, so a test can check the node's numbers:

    a[b, h] = state[b, -1] @ w_last + state[b, 0] @ w_first + bias
              + image_coef * mean(image[b, -1]) / 255 + h * ramp + noise_scale * noise[b, h]

Built with `onnx.helper` (no torch); its `roboloop` metadata comes from the contract's
`build_metadata` (inputs/outputs derived from the policy model type, as `learning.export` writes
them; action bounds, normalization stats of an identity map: state mean 0, std 1).
`python -m roboloop_policy.reference_model OUT.onnx` writes one for bringing a node up without
a trained model.

`fault=` builds the broken models the safety tests serve (see `FAULTS`); `action_bounds=None`
leaves the bounds out, as exports from before they were part of the contract did.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import numpy as np

from episode_dataset.ranges import NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, HelpFormatter
from roboloop_runtime import METADATA_KEY, ObsSpec, build_metadata

INT64_MAX = np.iinfo(np.int64).max
# fault -> what the model does wrong (the metadata still describes a healthy model)
FAULTS = {
    "nan_when_negative": "actions are NaN whenever the newest state[0] is negative",
    "constant": "every action value is `fault_value` (e.g. 1e6)",
    "extra_action": "actions have action_dim + 1 values (the metadata says action_dim)",
}


@dataclass(frozen=True)
class ReferencePolicy:
    """Weights of the reference policy; `actions` is the numpy ground truth."""

    w_last: np.ndarray  # (D, A)
    w_first: np.ndarray  # (D, A)
    bias: np.ndarray  # (A,)
    image_coef: np.ndarray  # (A,)
    ramp: np.ndarray  # (A,): action h of a chunk adds h * ramp
    noise_scale: float
    obs_steps: int
    horizon: int
    n_action_steps: int
    image_hw: tuple[int, int] | None
    control_rate_hz: float

    def actions(self, obs_history: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """obs_history[key] (B, obs_steps, *shape), noise (B, horizon, A) -> (B, horizon, A)."""
        state = obs_history["state"].astype(np.float64)
        y = state[:, -1] @ self.w_last + state[:, 0] @ self.w_first + self.bias
        if self.image_hw is not None:
            mean = obs_history["image"][:, -1].astype(np.float64).mean(axis=(1, 2, 3))
            y = y + mean[:, None] * self.image_coef / 255.0
        steps = np.arange(self.horizon)[None, :, None]
        out = y[:, None, :] + steps * self.ramp + self.noise_scale * noise
        return out.astype(np.float32)


def make_reference_policy(
    path: str | os.PathLike,
    state_dim: int = 4,
    action_dim: int = 2,
    image_hw: tuple[int, int] | None = None,
    obs_steps: int = 1,
    horizon: int = 1,
    n_action_steps: int = 1,
    control_rate_hz: float = 20.0,
    noise_scale: float = 0.0,
    seed: int = 0,
    action_bounds: tuple[float, float] | None = (-1000.0, 1000.0),
    fault: str | None = None,
    fault_value: float = 1e6,
) -> ReferencePolicy:
    """Write the ONNX file at `path` and return its weights (of the healthy model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if fault is not None and fault not in FAULTS:
        raise ValueError(f"fault {fault!r} is not one of {sorted(FAULTS)}")

    rng = np.random.default_rng(seed)
    ref = ReferencePolicy(
        w_last=rng.normal(size=(state_dim, action_dim)).astype(np.float32),
        w_first=(0.5 * rng.normal(size=(state_dim, action_dim))).astype(np.float32),
        bias=rng.uniform(0.5, 1.0, size=action_dim).astype(np.float32),  # never all-zero
        image_coef=rng.uniform(0.5, 1.0, size=action_dim).astype(np.float32),
        ramp=np.full(action_dim, 0.1, np.float32),
        noise_scale=float(noise_scale),
        obs_steps=obs_steps,
        horizon=horizon,
        n_action_steps=n_action_steps,
        image_hw=image_hw,
        control_rate_hz=control_rate_hz,
    )

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    steps = np.arange(horizon, dtype=np.float32)[:, None] * ref.ramp[None, :]
    inits = [
        const("w_last", ref.w_last),
        const("w_first", ref.w_first),
        const("bias", ref.bias),
        const("ramp", steps),  # (horizon, A)
        const("noise_scale", np.float32(noise_scale)),
        const("last_start", np.array([-1], np.int64)),
        const("first_start", np.array([0], np.int64)),
        const("first_end", np.array([1], np.int64)),
        const("to_end", np.array([INT64_MAX], np.int64)),
        const("time_axis", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("Slice", ["obs.state", "last_start", "to_end", "time_axis"], ["s_last"]),
        helper.make_node("Slice", ["obs.state", "first_start", "first_end", "time_axis"], ["s0"]),
        helper.make_node("MatMul", ["s_last", "w_last"], ["y_last"]),
        helper.make_node("MatMul", ["s0", "w_first"], ["y_first"]),
        helper.make_node("Add", ["y_last", "y_first"], ["y_state"]),
        helper.make_node("Add", ["y_state", "bias"], ["y_bias"]),  # (B, 1, A)
    ]
    batch = "batch"
    inputs = [
        helper.make_tensor_value_info(
            "obs.state", TensorProto.FLOAT, [batch, obs_steps, state_dim]
        )
    ]
    y = "y_bias"
    observations = {"state": ObsSpec((state_dim,), "float32", "low_dim").to_dict()}
    # The graph feeds raw observations: its normalization is the identity map.
    stats: dict = {
        "state": {"mode": "mean_std", "mean": [0.0] * state_dim, "std": [1.0] * state_dim}
    }
    if image_hw is not None:
        h, w = image_hw
        inputs.append(
            helper.make_tensor_value_info(
                "obs.image", TensorProto.UINT8, [batch, obs_steps, h, w, 3]
            )
        )
        inits += [
            const("image_coef", ref.image_coef / np.float32(255.0)),
            const("mean_axis", np.array([2], np.int64)),
        ]
        nodes += [
            helper.make_node(
                "Slice", ["obs.image", "last_start", "to_end", "time_axis"], ["im_last"]
            ),
            helper.make_node("Cast", ["im_last"], ["im_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["im_f"], ["im_mean"], axes=[2, 3, 4], keepdims=0),
            helper.make_node("Unsqueeze", ["im_mean", "mean_axis"], ["im_mean3"]),  # (B, 1, 1)
            helper.make_node("Mul", ["im_mean3", "image_coef"], ["y_image"]),
            helper.make_node("Add", ["y_bias", "y_image"], ["y_all"]),
        ]
        y = "y_all"
        observations["image"] = ObsSpec((h, w, 3), "uint8", "image").to_dict()
        stats["image"] = {"mode": "image"}
    inputs.append(
        helper.make_tensor_value_info("noise", TensorProto.FLOAT, [batch, horizon, action_dim])
    )
    healthy = "actions" if fault is None else "healthy_actions"
    nodes += [
        helper.make_node("Add", [y, "ramp"], ["chunk"]),  # (B, horizon, A)
        helper.make_node("Mul", ["noise", "noise_scale"], ["scaled_noise"]),
        helper.make_node("Add", ["chunk", "scaled_noise"], [healthy]),
    ]
    out_dim = action_dim
    if fault == "nan_when_negative":  # + 0 * sqrt(state[-1][0]): NaN for a negative value
        inits += [const("zero", np.float32(0.0)), const("axis2", np.array([2], np.int64))]
        nodes += [
            helper.make_node("Slice", ["s_last", "first_start", "first_end", "axis2"], ["s00"]),
            helper.make_node("Sqrt", ["s00"], ["root"]),  # (B, 1, 1)
            helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
            helper.make_node("Add", [healthy, "nan_or_zero"], ["actions"]),
        ]
    elif fault == "constant":
        inits += [const("zero", np.float32(0.0)), const("fault_value", np.float32(fault_value))]
        nodes += [
            helper.make_node("Mul", [healthy, "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "fault_value"], ["actions"]),
        ]
    elif fault == "extra_action":
        inits.append(const("pads", np.array([0, 0, 0, 0, 0, 1], np.int64)))
        nodes.append(helper.make_node("Pad", [healthy, "pads"], ["actions"]))
        out_dim = action_dim + 1
    outputs = [
        helper.make_tensor_value_info("actions", TensorProto.FLOAT, [batch, horizon, out_dim])
    ]
    graph = helper.make_graph(nodes, "reference_policy", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    fields = {
        "observations": observations,
        "obs_steps": obs_steps,
        "action_dim": action_dim,
        "horizon": horizon,
        "n_action_steps": n_action_steps,
        "control_rate_hz": control_rate_hz,
        "normalization": {"baked": True, "stats": stats},
        "sampler": {"type": "euler", "steps": 1},
    }
    if action_bounds is not None:
        low, high = action_bounds
        fields["action_bounds"] = {
            "low": [float(low)] * action_dim,
            "high": [float(high)] * action_dim,
            "source": "env",
        }
    metadata = build_metadata(
        "policy",
        fields,
        training_config={"reference_policy": True, "seed": seed},
        code_version="reference",
    )
    helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))
    return ref


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m roboloop_policy.reference_model",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--state-dim", type=POSITIVE_INT, default=4, help="state observation size")
    parser.add_argument("--action-dim", type=POSITIVE_INT, default=2, help="action size")
    parser.add_argument(
        "--image", type=NON_NEGATIVE_INT, default=0, help="square rgb8 image size (0: none)"
    )
    parser.add_argument(
        "--rate", type=POSITIVE_FLOAT, default=20.0, help="control_rate_hz metadata"
    )
    parser.add_argument("--fault", choices=sorted(FAULTS), help="a broken model (safety tests)")
    args = parser.parse_args(argv)
    make_reference_policy(
        args.out,
        state_dim=args.state_dim,
        action_dim=args.action_dim,
        image_hw=(args.image, args.image) if args.image else None,
        control_rate_hz=args.rate,
        fault=args.fault,
    )
    print(args.out)


if __name__ == "__main__":
    main()
