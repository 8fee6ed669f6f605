"""The layering holds: episode_dataset -> roboloop_runtime -> sim -> learning -> ROS packages
-> demo -> test support (roboloop_testing), bench; no module imports a package of a higher layer
(imports inside functions count), so no product package imports test support.
And the runtime (plus the sim modules the ROS nodes use) imports with torch, rclpy and MuJoCo
blocked, and runs an ONNX model built with `onnx.helper`."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROS_SRC = REPO / "ros2_ws" / "src"
# ros2_ws/src/<pkg>/<pkg>/__init__.py: the Python package of each ROS package.
ROS_PACKAGES = sorted(p.name for p in ROS_SRC.glob("*/*") if p.name == p.parent.name)

# Top-level package -> layer; a module may import its own layer and the layers below.
LAYERS: dict[str, int] = {
    "episode_dataset": 0,
    "roboloop_runtime": 1,
    "sim": 2,
    "learning": 3,
    **{name: 4 for name in ROS_PACKAGES},
    "demo": 5,
    "training": 5,  # seed 002's command line (training/train.py)
    "ac_training": 5,  # seed 003's command line (ac_training/scripts/train_acrlpd_pi0.py)
    "roboloop_testing": 6,  # test support: tests and benchmarks only
    "bench": 6,
}


def package_dir(name: str) -> Path:
    return ROS_SRC / name / name if name in ROS_PACKAGES else REPO / name


def imported_packages(source: str) -> Iterator[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `source`, at any depth."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def upward_imports(name: str) -> list[str]:
    """'file:line imports pkg (layer n)' for every import of `name`'s modules that runs up."""
    layer, found = LAYERS[name], []
    for path in sorted(package_dir(name).rglob("*.py")):
        for line, target in imported_packages(path.read_text()):
            if LAYERS.get(target, -1) > layer:
                where = path.relative_to(REPO)
                found.append(f"{where}:{line} imports {target} (layer {LAYERS[target]} > {layer})")
    return found


def test_every_layer_exists_and_the_ros_packages_are_found() -> None:
    assert {"roboloop_node_common", "roboloop_policy", "roboloop_namo"} <= set(ROS_PACKAGES)
    for name in LAYERS:
        assert any(package_dir(name).rglob("*.py")), f"no modules under {package_dir(name)}"


def test_the_checker_sees_imports_inside_functions_and_ignores_relative_ones() -> None:
    source = "import os\nfrom . import x\ndef f():\n    from learning.namo import planner\n"
    assert list(imported_packages(source)) == [(1, "os"), (4, "learning")]


def test_no_module_imports_a_higher_layer() -> None:
    violations = [v for name in LAYERS for v in upward_imports(name)]
    assert not violations, "imports running up the layers:\n" + "\n".join(violations)


# Blocks the heavy stacks: importing any of them raises ImportError naming the module.
_BLOCKED_RUN = r"""
import importlib, json, pkgutil, sys, tempfile
from pathlib import Path

BLOCKED = ("torch", "rclpy", "mujoco")

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
for name in BLOCKED:
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    raise SystemExit(f"the blocker let {name} import")
import numpy as np
import roboloop_runtime

modules = [m.name for m in pkgutil.walk_packages(roboloop_runtime.__path__, "roboloop_runtime.")]
for name in modules + json.loads(sys.argv[1]):
    importlib.import_module(name)

from roboloop_policy.reference_model import make_reference_policy
from roboloop_runtime import OnnxModel

tmp = Path(tempfile.mkdtemp())
ref = make_reference_policy(tmp / "policy.onnx", state_dim=3, action_dim=2, horizon=4)
model = OnnxModel(tmp / "policy.onnx", device="cpu", threads=1)
rng = np.random.default_rng(0)
state = rng.standard_normal((2, 1, 3)).astype(np.float32)
noise = rng.standard_normal((2, 4, 2)).astype(np.float32)
out = model.run({"obs.state": state, "noise": noise})["actions"]
np.testing.assert_allclose(out, ref.actions({"state": state}, noise), rtol=1e-5, atol=1e-5)

from roboloop_goal_generator.reference_model import make_reference_generator
from sim.namo.goal_generator import GoalGenerator

make_reference_generator(tmp / "goals.onnx", image_size=8)
generator = GoalGenerator(tmp / "goals.onnx", num_proposals=3)
proposals = generator.propose(np.zeros((16, 16, 5), np.float32))
assert proposals.shape == (3, 8, 8), proposals.shape
loaded = [m for m in BLOCKED if m in sys.modules]
print(json.dumps({"modules": len(modules), "blocked_loaded": loaded}))
"""

# The sim modules the ROS q_scorer and goal generator import: torch-, rclpy- and MuJoCo-free.
NODE_SIM_MODULES = [
    "sim.namo.keys",
    "sim.namo.layout",
    "sim.namo.mask_files",
    "sim.namo.scoring",
    "sim.namo.goal_generator",
]


def test_runtime_and_node_sim_modules_run_onnx_with_torch_rclpy_mujoco_blocked() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, json.dumps(NODE_SIM_MODULES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["modules"] >= 4 and result["blocked_loaded"] == []
