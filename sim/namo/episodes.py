"""MCTS episodes: a scene solved step by step by MCTS, every decision's root proposals + Q.

An episode file ``episode_<e>.json`` (scene seed = e) holds everything needed to rebuild the
transition model and every decision's state exactly (``sim.namo.mask_generation`` renders masks
from it):

    {"format": "roboloop.namo.episode/1", "episode": e, "level": "easy" | "medium" | "hard",
     "scene": Scene.to_dict(),
     "model_config": ModelConfig as dict, "mcts_config": MCTSConfig as dict, "max_moves": int,
     "decisions": [{"state": NamoState.to_dict(), "proposals": [[object_id, x, y, theta], ...],
                    "q_values": [...], "visits": [...], "chosen": index, "seconds": s}, ...],
     "solved": bool, "moves": int, "start_reached": bool, "final_state": NamoState.to_dict()}

``level`` (a ``sim.namo.scene.LEVELS`` name) was added later: files without it hold ``easy``
scenes; readers rebuild the scene from ``scene`` either way. ``max_moves`` (the episode's move
limit) too: a collection that goes on in a folder compares it (files without it: unknown).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from episode_dataset import whole_or_absent
from episode_dataset.ranges import POSITIVE_INT, one_line
from sim.namo.mcts import MCTS, MCTSConfig
from sim.namo.scene import LEVELS, Scene, generate_scene
from sim.namo.transition import CostConfig, ModelConfig, NamoState, Proposal, TransitionModel

FORMAT = "roboloop.namo.episode/1"


class EpisodeFileError(ValueError):
    """An episode file that cannot be read (names the file and the problem)."""


def add_episode_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of how an episode is played, shared by the collection and the planner
    evaluation: --level, --max-moves, and MCTS's --mcts-budget and --max-depth."""
    parser.add_argument("--level", choices=sorted(LEVELS), default="easy", help="scene difficulty")
    parser.add_argument(
        "--max-moves", type=POSITIVE_INT, default=5, help="decisions per episode at most"
    )
    parser.add_argument(
        "--mcts-budget", type=POSITIVE_INT, default=100, help="simulations per decision"
    )
    parser.add_argument(
        "--max-depth", type=POSITIVE_INT, default=3, help="moves looked ahead per search"
    )


def model_config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    d["costs"] = CostConfig(**d.get("costs", {}))
    return ModelConfig(**d)


def solve_episode(
    episode: int,
    mcts_config: MCTSConfig,
    max_moves: int = 5,
    model_config: ModelConfig | None = None,
    scene: Scene | None = None,
    level: str = "easy",
) -> dict[str, Any]:
    """Solve scene ``generate_scene(episode, level=level)`` (or ``scene``) with MCTS, one search
    per move."""
    scene = scene or generate_scene(episode, level=level)
    model = TransitionModel(scene, model_config)
    search = MCTS(model, mcts_config)
    search.reset(mcts_config.seed * 1_000_003 + episode)  # per-episode stream, reproducible
    state = model.initial_state()
    start_reached = model.goal_reached(state)
    decisions = []
    while not model.goal_reached(state) and len(decisions) < max_moves:
        result = search.search(state)
        if result.best is None:
            break
        decisions.append(
            {
                "state": state.to_dict(),
                "proposals": [[p.object_id, p.x, p.y, p.theta] for p in result.proposals],
                "q_values": [float(q) for q in result.q_values],
                "visits": [int(v) for v in result.visits],
                "chosen": result.best_index,
                "seconds": result.seconds,
            }
        )
        state = model.step(state, result.best).state
    return {
        "format": FORMAT,
        "episode": episode,
        "level": level,
        "scene": scene.to_dict(),
        "model_config": asdict(model.config),
        "mcts_config": asdict(mcts_config),
        "max_moves": max_moves,
        "decisions": decisions,
        "solved": model.goal_reached(state),
        "moves": len(decisions),
        "start_reached": start_reached,
        "final_state": state.to_dict(),
    }


def write_episode(episode: dict[str, Any], output_dir: str | Path) -> Path:
    path = Path(output_dir) / f"episode_{episode['episode']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with whole_or_absent(path) as tmp:  # a crashed worker or a full disk leaves no half file
        tmp.write_text(json.dumps(episode))
    return path


def read_episode(path: str | Path) -> dict[str, Any]:
    """The episode stored at `path`, checked through: its scene, model config and every
    decision parse (`check_episode`). Anything unreadable is one EpisodeFileError line naming
    the file and what is wrong, so readers never meet a half-valid episode deep in their work."""
    path = Path(path)
    try:
        episode = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bytes that are not UTF-8
        raise EpisodeFileError(f"{path}: cannot read episode: {one_line(err)}") from None
    if not isinstance(episode, dict):
        raise EpisodeFileError(f"{path}: a JSON {type(episode).__name__}, not an episode object")
    if episode.get("format") != FORMAT:
        raise EpisodeFileError(f"{path}: format {episode.get('format')!r}, expected {FORMAT!r}")
    for key in ("episode", "scene", "model_config", "decisions"):
        if key not in episode:
            raise EpisodeFileError(f"{path}: missing key {key!r}")
    check_episode(episode, str(path))
    return episode


def _why(err: Exception) -> str:
    if isinstance(err, KeyError) and err.args:
        key = err.args[0]  # Scene.from_dict's KeyError already holds a sentence
        return key if isinstance(key, str) and " " in key else f"missing key {key!r}"
    return (
        one_line(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {one_line(err)}"
    )


def check_episode(episode: dict[str, Any], where: str) -> None:
    """Raise EpisodeFileError (prefixed with `where`) unless the episode number, the scene, the
    model config and every decision (`decision_items`, visits, moved objects, one pose per
    scene object) are usable."""
    try:
        int(episode["episode"])
    except (TypeError, ValueError) as err:
        raise EpisodeFileError(f"{where}: episode number unusable ({_why(err)})") from None
    try:
        scene = Scene.from_dict(episode["scene"])
    except (KeyError, TypeError, ValueError) as err:
        raise EpisodeFileError(f"{where}: scene unusable ({_why(err)})") from None
    try:
        model_config_from_dict(episode["model_config"])
    except (TypeError, ValueError) as err:
        raise EpisodeFileError(f"{where}: model_config unusable ({_why(err)})") from None
    decisions = episode["decisions"]
    if not isinstance(decisions, list):
        raise EpisodeFileError(f"{where}: decisions is a {type(decisions).__name__}, not a list")
    ids = {o.object_id for o in scene.objects}
    for g, decision in enumerate(decisions):
        try:
            state, proposals, _ = decision_items(decision)
            if len(state.robot) != 2:
                raise ValueError("state robot must be (x, y)")
            if len(state.poses) != len(ids) or any(len(p) != 3 for p in state.poses):
                raise ValueError(f"state needs {len(ids)} (x, y, yaw) poses, one per object")
            unknown = sorted({p.object_id for p in proposals} - ids)
            if unknown:
                raise ValueError(f"proposals move {unknown}, not objects of the scene")
            visits = decision.get("visits", [1] * len(proposals))
            counts = isinstance(visits, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in visits
            )
            if not counts or len(visits) != len(proposals):
                raise ValueError(f"visits must be a list of {len(proposals)} counts")
        except (KeyError, TypeError, ValueError) as err:
            raise EpisodeFileError(f"{where}: decision {g}: {_why(err)}") from None


def episode_model(episode: dict[str, Any]) -> TransitionModel:
    return TransitionModel(
        Scene.from_dict(episode["scene"]), model_config_from_dict(episode["model_config"])
    )


def _field(decision: dict[str, Any], key: str, parse: Callable[[Any], Any]) -> Any:
    try:
        return parse(decision[key])
    except KeyError:
        raise KeyError(key) from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key} unusable ({type(err).__name__}: {one_line(err)})") from None


def decision_items(decision: dict[str, Any]) -> tuple[NamoState, list[Proposal], list[float]]:
    """(state, root proposals, their Q) of one stored decision; a missing key is a KeyError, a
    value that does not parse a ValueError naming the key."""
    if not isinstance(decision, dict):
        raise TypeError(f"a JSON {type(decision).__name__}, not a decision object")
    state = _field(decision, "state", NamoState.from_dict)
    proposals = _field(
        decision,
        "proposals",
        lambda ps: [Proposal(str(o), float(x), float(y), float(t)) for o, x, y, t in ps],
    )
    q_values = _field(decision, "q_values", lambda qs: [float(q) for q in qs])
    if len(q_values) != len(proposals):
        raise ValueError(f"{len(proposals)} proposals but {len(q_values)} q_values")
    return state, proposals, q_values
