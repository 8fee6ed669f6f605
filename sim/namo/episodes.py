"""MCTS episodes: a scene solved step by step by MCTS, every decision's root proposals + Q.

An episode file ``episode_<e>.json`` (scene seed = e) holds everything needed to rebuild the
transition model and every decision's state exactly (``sim.namo.mask_generation`` renders masks
from it):

    {"format": "roboloop.namo.episode/1", "episode": e, "level": "easy" | "medium" | "hard",
     "scene": Scene.to_dict(),
     "model_config": ModelConfig as dict, "mcts_config": MCTSConfig as dict,
     "decisions": [{"state": NamoState.to_dict(), "proposals": [[object_id, x, y, theta], ...],
                    "q_values": [...], "visits": [...], "chosen": index, "seconds": s}, ...],
     "solved": bool, "moves": int, "start_reached": bool, "final_state": NamoState.to_dict()}

``level`` (a ``sim.namo.scene.LEVELS`` name) was added later: files without it hold ``easy``
scenes; readers rebuild the scene from ``scene`` either way.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from episode_dataset.ranges import POSITIVE_INT
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
        "decisions": decisions,
        "solved": model.goal_reached(state),
        "moves": len(decisions),
        "start_reached": start_reached,
        "final_state": state.to_dict(),
    }


def write_episode(episode: dict[str, Any], output_dir: str | Path) -> Path:
    path = Path(output_dir) / f"episode_{episode['episode']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(episode))
    tmp.replace(path)  # atomic: a crashed worker never leaves half a file
    return path


def read_episode(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        episode = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EpisodeFileError(f"{path}: cannot read episode: {err}") from None
    if episode.get("format") != FORMAT:
        raise EpisodeFileError(f"{path}: format {episode.get('format')!r}, expected {FORMAT!r}")
    for key in ("episode", "scene", "model_config", "decisions"):
        if key not in episode:
            raise EpisodeFileError(f"{path}: missing key {key!r}")
    return episode


def episode_model(episode: dict[str, Any]) -> TransitionModel:
    return TransitionModel(
        Scene.from_dict(episode["scene"]), model_config_from_dict(episode["model_config"])
    )


def decision_items(decision: dict[str, Any]) -> tuple[NamoState, list[Proposal], list[float]]:
    state = NamoState.from_dict(decision["state"])
    proposals = [
        Proposal(str(o), float(x), float(y), float(t)) for o, x, y, t in decision["proposals"]
    ]
    return state, proposals, [float(q) for q in decision["q_values"]]
