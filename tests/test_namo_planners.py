"""sim.namo.planners registry (learned planners registered from learning) + evaluation harness and
CLI, MuJoCo plan check, decision rendering."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import learning.generative.planner  # noqa: F401  (registers dit_q)
import learning.namo.planner  # noqa: F401  (registers learned_q)
from sim.namo.evaluate_planners import DEFAULT_FIRST_SEED, evaluate_planners, summarize
from sim.namo.mcts import MCTS, MCTSConfig
from sim.namo.mujoco_model import NamoPhysics, check_plan, grid_path
from sim.namo.planners import PLANNERS, make_planner, register_planner
from sim.namo.render import colormap, render_decision, save_png
from sim.namo.scene import doorway_scene, generate_scene
from sim.namo.transition import NamoState, TransitionModel

SEEDS = [DEFAULT_FIRST_SEED + k for k in range(4)]


def test_registry_names_and_errors() -> None:
    assert {"mcts", "random", "learned_q", "dit_q"} <= set(PLANNERS)
    with pytest.raises(KeyError, match="unknown NAMO planner 'nope'"):
        make_planner("nope")
    planner = make_planner("random")
    with pytest.raises(RuntimeError, match="call reset"):
        planner.choose(TransitionModel(doorway_scene()).initial_state())
    register_planner("random_again", lambda **kw: make_planner("random", **kw))
    assert make_planner("random_again").name == "random"
    del PLANNERS["random_again"]


def test_evaluate_mcts_and_random_on_held_out_scenes() -> None:
    planners = [make_planner("mcts", budget=20), make_planner("random")]
    rows = evaluate_planners(planners, SEEDS, max_moves=4)
    assert len(rows) == 2 * len(SEEDS) and {r["seed"] for r in rows} == set(SEEDS)
    mcts = [r for r in rows if r["planner"] == "mcts"]
    assert all(r["success"] for r in mcts)
    assert all(r["seconds_per_decision"] > 0 for r in mcts if r["decisions"])
    # The plan's return: each move costs at least move_cost (0.1), a failure returns 0.
    for r in rows:
        if r["success"]:
            assert 0 < r["plan_return"] <= 1 - 0.1 * r["moves"] + 1e-9, r
        else:
            assert r["plan_return"] == 0, r
    summary = {s["planner"]: s for s in summarize(rows)}
    assert summary["mcts"]["success_rate"] == 1.0
    assert summary["mcts"]["moves_per_solve"] <= summary["random"]["moves_per_solve"] or (
        summary["random"]["success_rate"] < 1.0
    )
    # Same planner, same seeds -> same rows (timings aside).
    again = evaluate_planners([make_planner("mcts", budget=20)], SEEDS, max_moves=4)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in again]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in mcts]


@pytest.fixture(scope="module")
def q_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from learning.export import export_model
    from learning.namo.model import QFunctionNet

    torch.manual_seed(0)
    net = QFunctionNet(hidden_dim=16, image_size=16, encoder_channels=[4, 4, 4, 4])
    path = tmp_path_factory.mktemp("namo_q") / "q.onnx"
    export_model(net, path, mask_size=(40, 40))
    return path


def test_learned_q_from_the_registry_runs_on_an_onnx_q_function(q_onnx: Path) -> None:
    planner = make_planner("learned_q", model_path=str(q_onnx), proposals_per_object=2)
    assert planner.name == "learned_q" and planner.mask_size == 40  # read from the ONNX input
    rows = evaluate_planners([planner], SEEDS, max_moves=2)
    assert sum(r["decisions"] for r in rows) >= 1
    assert all(r["decisions"] == 0 or r["network_seconds_per_decision"] > 0 for r in rows)
    decision = planner.last_decision
    assert len(decision.q_values) == len(decision.proposals) >= 1
    assert decision.proposal is decision.proposals[int(np.argmax(decision.q_values))]
    assert all(r["setup_seconds"] > 0 for r in rows)


def test_learned_q_does_the_per_scene_mask_work_when_given_the_scene(q_onnx: Path) -> None:
    planner = make_planner("learned_q", model_path=str(q_onnx))
    model = TransitionModel(generate_scene(SEEDS[0], level="medium"))
    assert model._goal_static is None
    planner.reset(model, SEEDS[0])
    goal_field = model._goal_static
    assert goal_field is not None and np.isfinite(goal_field[model.goal_cell])
    planner.choose(model.initial_state())
    assert model._goal_static is goal_field  # the decision reused it


def test_dit_q_from_the_registry_runs_with_onnx_generator_and_q(
    q_onnx: Path, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from hydra.utils import instantiate

    from learning.export import export_model
    from learning.train import compose_config

    cfg = compose_config(
        "train_fb_flow_matching",
        ["network=dit_tiny", "image_size=32", "model.sampler.method=euler", "sampling_steps=1"],
    )
    torch.manual_seed(0)
    export_model(instantiate(cfg.model, _convert_="all").eval(), tmp_path / "g.onnx", {})
    planner = make_planner(
        "dit_q",
        generator_path=str(tmp_path / "g.onnx"),
        q_model_path=str(q_onnx),
        proposals_per_object=2,
    )
    assert planner.name == "dit_q" and planner.mask_size == 40
    rows = evaluate_planners([planner], SEEDS[1:3], max_moves=1)
    assert sum(r["decisions"] for r in rows) >= 1
    d = planner.last_decision
    assert d.generated >= 2 and (d.fallback or d.valid == len(d.proposals))


def test_evaluate_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "learning.namo.evaluate_planners", "--planners", "mcts", "random",
         "--seeds", *map(str, SEEDS[:2]), "--mcts-budget", "10", "--proposals-per-object", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert [s["planner"] for s in payload["summary"]] == ["mcts", "random"]
    assert len(payload["rows"]) == 4 and "success_rate" in proc.stdout
    assert payload["planners"]["mcts"] == {"proposals_per_object": 2, "budget": 10, "max_depth": 3}


def test_proposals_per_object_reaches_every_planner() -> None:
    from learning.namo.evaluate_planners import _planner_kwargs

    args = argparse.Namespace(proposals_per_object=2, mcts_budget=10, max_depth=3)
    assert make_planner("mcts", **_planner_kwargs("mcts", args)).config.proposals_per_object == 2
    assert make_planner("random", **_planner_kwargs("random", args)).proposals_per_object == 2
    default = argparse.Namespace(proposals_per_object=None, mcts_budget=10, max_depth=3)
    assert make_planner("random", **_planner_kwargs("random", default)).proposals_per_object == 4


def test_mujoco_check_accepts_the_mcts_plan_and_rejects_a_box_in_a_wall() -> None:
    model = TransitionModel(doorway_scene(distractor=True))
    state = model.initial_state()
    best = MCTS(model, MCTSConfig(budget=30, seed=0)).search(state).best
    check = check_plan(model, [best])
    assert check.ok, check.failures()
    assert len(check.states) == 2
    # A pose the transition model would refuse: the door box pushed into the wall below.
    bad = NamoState(state.robot, ((2.0, 0.4, 0.0), state.poses[1]))
    result = NamoPhysics(model.scene).check_state(bad)
    assert result.max_penetration > 0.05
    assert any("door" in (a, b) for a, b, _ in result.penetrations)
    assert result.max_drift > 0.005  # the contact solver pushes it out: it does not stay put


def test_mujoco_robot_drives_to_the_goal_only_once_the_door_box_is_moved() -> None:
    model = TransitionModel(doorway_scene())
    start = model.initial_state()
    with pytest.raises(ValueError, match="goal not reachable"):
        grid_path(model, start)
    best = MCTS(model, MCTSConfig(budget=20, seed=0)).search(start).best
    check = check_plan(model, [best], drive_to_goal=True)
    assert check.ok, check.failures()
    assert check.drive.goal_error < 0.02 and check.drive.max_object_drift < 1e-3
    assert len(check.drive.path) > 10
    solved = model.step(start, best).state
    # Same path, but physically the box still sits in the doorway: the robot cannot get through
    # without shoving it, and the check says so.
    blocked = NamoPhysics(model.scene).drive(model, solved, physical_state=start)
    problems = blocked.failures(0.05, 1e-3, 5e-3)
    assert problems and blocked.max_object_drift + blocked.goal_error > 0.05


def test_mujoco_check_accepts_random_moves_on_generated_scenes() -> None:
    for seed in (1, 4):
        model = TransitionModel(generate_scene(seed))
        state, rng, plan = model.initial_state(), np.random.default_rng(seed), []
        for _ in range(3):
            moves = model.proposals(state, 2, rng)
            plan.append(moves[int(rng.integers(len(moves)))])
            state = model.step(state, plan[-1]).state
        check = check_plan(model, plan, settle_steps=30)
        assert check.ok, (seed, check.failures())


def test_render_decision_png_colours_proposals_by_q(tmp_path: Path) -> None:
    model = TransitionModel(doorway_scene(distractor=True))
    state = model.initial_state()
    result = MCTS(model, MCTSConfig(budget=20, seed=0)).search(state)
    img = render_decision(model, state, result.proposals, result.q_values, size=256, mask_size=64)
    path = save_png(img, tmp_path / "decision.png")
    loaded = np.asarray(Image.open(path).convert("RGB"))
    assert loaded.shape[1] == 512 and loaded.shape[0] >= 256
    best_colour = np.array(colormap(float(result.q_values.max())))
    left = loaded[:, :256].reshape(-1, 3)
    assert (np.abs(left - best_colour).sum(1) <= 3).any()  # best proposal outline drawn


V1_MODELS = Path(__file__).parent / "data" / "v1_models"


def _flipped_onnx(tmp: Path) -> str:
    data = bytearray((V1_MODELS / "q_function_v1.onnx").read_bytes())
    for i in range(100, len(data), 97):
        data[i] ^= 0xFF
    (tmp / "flip.onnx").write_bytes(bytes(data))
    return str(tmp / "flip.onnx")


def _truncated_ckpt(tmp: Path) -> str:
    (tmp / "cut.ckpt").write_bytes(b"PK\x03\x04 half a zip")
    return str(tmp / "cut.ckpt")


def _foreign_ckpt(tmp: Path) -> str:
    torch = pytest.importorskip("torch")
    # What a policy (e.g. FBC) checkpoint holds for QFunctionNet: other weights, other kwargs.
    ckpt = {
        "state_dict": {"network.net.0.weight": torch.zeros(4, 3)},
        "hyper_parameters": {"hidden_dim": 8},
        "pytorch-lightning_version": "2.4.0",
    }
    torch.save(ckpt, tmp / "fbc.ckpt")
    return str(tmp / "fbc.ckpt")


def _hdf5(tmp: Path) -> str:
    (tmp / "x.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    return str(tmp / "x.hdf5")


def _q(path: str) -> list[str]:
    return ["--planners", "learned_q", "--q-model", path]


def _q_as_generator(tmp: Path) -> list[str]:
    q = str(V1_MODELS / "q_function_v1.onnx")
    return ["--planners", "dit_q", "--q-model", q, "--generator", q]


@pytest.mark.parametrize(
    ("make_argv", "says"),
    [
        pytest.param(lambda t: _q(_flipped_onnx(t)), "flip.onnx: cannot load", id="flipped_onnx"),
        pytest.param(
            lambda t: _q(str(V1_MODELS / "flow_policy_v1.onnx")),
            "model_type 'policy' is not a q_function",
            id="onnx_policy",
        ),
        pytest.param(
            lambda t: _q(_truncated_ckpt(t)),
            "cut.ckpt: not a readable torch checkpoint",
            id="truncated_ckpt",
        ),
        pytest.param(
            lambda t: _q(_foreign_ckpt(t)),
            "fbc.ckpt: not a QFunctionNet checkpoint",
            id="foreign_ckpt",
        ),
        pytest.param(lambda t: _q(_hdf5(t)), "unknown Q-function file type '.hdf5'", id="hdf5"),
        pytest.param(
            lambda t: _q(str(t / "missing.onnx")), "missing.onnx: no such model", id="missing"
        ),
        pytest.param(_q_as_generator, "expected 'goal_generator'", id="q_as_generator"),
        pytest.param(
            lambda t: ["--planners", "random", "--out", str(t)],
            "--out is a directory",
            id="out_is_dir",
        ),
    ],
)
def test_evaluate_cli_refuses_bad_models_and_out_in_one_line_before_any_scene(
    make_argv, says: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import learning.namo.evaluate_planners as cli

    monkeypatch.setattr(cli, "evaluate_planners", lambda *a, **k: pytest.fail("played a scene"))
    with pytest.raises(SystemExit) as exit_:
        cli.main([*make_argv(tmp_path), "--seeds", "100000"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert err.startswith("python -m learning.namo.evaluate_planners: error: ") and says in err
    assert len(err.splitlines()) == 1, err


def test_evaluate_cli_unknown_planner_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    from learning.namo.evaluate_planners import main

    with pytest.raises(SystemExit) as exit_:
        main(["--planners", "random", "nosuch"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "argument --planners: invalid choice: 'nosuch'" in err.splitlines()[-1]
