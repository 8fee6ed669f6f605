"""PNG rendering for people: the scene, proposals coloured by Q, and a grid of mask channels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from episode_dataset.ranges import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    SEED_ARG,
    HelpFormatter,
    one_line,
)
from sim.namo.grid import rect_corners
from sim.namo.keys import ACTION_KEYS, STATE_KEYS
from sim.namo.scene import Scene
from sim.namo.transition import NamoState, Proposal

# A few viridis anchors; linear interpolation is plenty for eyeballing Q values.
_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float
)


def colormap(value: float) -> tuple[int, int, int]:
    """Viridis-like colour for value in [0, 1] (clipped)."""
    v = float(np.clip(value, 0.0, 1.0)) * (len(_VIRIDIS) - 1)
    k = min(int(v), len(_VIRIDIS) - 2)
    c = _VIRIDIS[k] + (v - k) * (_VIRIDIS[k + 1] - _VIRIDIS[k])
    return tuple(int(round(x)) for x in c)


def render_scene(
    scene: Scene,
    state: NamoState,
    proposals: Sequence[Proposal] = (),
    q_values: Sequence[float] | None = None,
    size: int = 512,
    reachable: np.ndarray | None = None,
) -> Image.Image:
    """Top-down RGB image: walls grey, objects tan, robot blue, goal green, proposals as outlined
    target footprints with an arrow from the object, coloured by Q (viridis; grey if no Q)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img, "RGBA")
    sx, sy = size / scene.width, size / scene.height

    def px(x: float, y: float) -> tuple[float, float]:
        return (x * sx, (scene.height - y) * sy)

    if reachable is not None:
        tint = np.zeros((*reachable.shape, 4), dtype=np.uint8)
        tint[reachable] = (120, 170, 255, 60)
        over = Image.fromarray(tint, "RGBA").resize((size, size), Image.NEAREST)
        img.paste(over, (0, 0), over)
    for w in scene.walls:
        draw.polygon(
            [px(*c) for c in rect_corners(w.x, w.y, 0.0, w.half_x, w.half_y)], fill=(90, 90, 90)
        )
    for obj, pose in zip(scene.objects, state.poses, strict=True):
        draw.polygon(
            [px(*c) for c in rect_corners(*pose, obj.half_x, obj.half_y)],
            fill=(205, 160, 100),
            outline=(120, 80, 30),
        )
        draw.text(px(pose[0], pose[1]), obj.object_id.replace("obj_", ""), fill=(0, 0, 0))
    order = np.argsort(q_values) if q_values is not None else range(len(proposals))
    for idx in order:  # best last, so it is drawn on top
        p = proposals[idx]
        q = None if q_values is None else q_values[idx]
        col = (150, 150, 150) if q is None or not math.isfinite(q) else colormap(q)
        obj = scene.objects[scene.object_index(p.object_id)]
        start = state.poses[scene.object_index(p.object_id)]
        draw.polygon(
            [px(*c) for c in rect_corners(*p.pose, obj.half_x, obj.half_y)],
            outline=(*col, 255),
            fill=(*col, 50),
        )
        _arrow(draw, px(start[0], start[1]), px(p.x, p.y), (*col, 220))
    r = scene.robot_radius
    gx, gy = px(*scene.goal)
    draw.ellipse(
        [gx - r * sx, gy - r * sy, gx + r * sx, gy + r * sy], outline=(0, 150, 0), width=3
    )
    draw.line([gx - 6, gy, gx + 6, gy], fill=(0, 150, 0), width=2)
    draw.line([gx, gy - 6, gx, gy + 6], fill=(0, 150, 0), width=2)
    rx, ry = px(*state.robot)
    draw.ellipse([rx - r * sx, ry - r * sy, rx + r * sx, ry + r * sy], fill=(40, 90, 220))
    return img


def _arrow(draw: ImageDraw.ImageDraw, a, b, colour) -> None:
    draw.line([a, b], fill=colour, width=2)
    ang = math.atan2(b[1] - a[1], b[0] - a[0])
    for d in (2.6, -2.6):
        draw.line(
            [b, (b[0] + 9 * math.cos(ang + d), b[1] + 9 * math.sin(ang + d))], fill=colour, width=2
        )


def render_masks(
    masks: dict[str, np.ndarray], keys: Sequence[str], tile: int = 160
) -> Image.Image:
    """Grid of grayscale tiles (values in [0, 1]) with the channel name under each."""
    cols = 4
    rows = math.ceil(len(keys) / cols)
    label_h = 14
    img = Image.new("RGB", (cols * tile, rows * (tile + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for n, key in enumerate(keys):
        arr = np.clip(np.asarray(masks[key], dtype=float), 0, 1)
        im = Image.fromarray((arr * 255).astype(np.uint8), "L").resize((tile, tile), Image.NEAREST)
        x, y = (n % cols) * tile, (n // cols) * (tile + label_h)
        img.paste(im.convert("RGB"), (x, y))
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=(200, 0, 0))
        draw.text((x + 3, y + tile + 1), key, fill=(0, 0, 0))
    return img


def save_png(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def render_decision(
    model,  # noqa: ANN001  (sim.namo.transition.TransitionModel; import kept lazy for masks)
    state: NamoState,
    proposals: Sequence[Proposal],
    q_values: Sequence[float] | None = None,
    size: int = 512,
    mask_size: int = 224,
) -> Image.Image:
    """Scene with the proposals coloured by Q (reachable region tinted) left, and the 13 mask
    channels of the best proposal (highest Q, else the first) right."""
    from sim.namo.masks import proposal_masks

    left = render_scene(
        model.scene, state, proposals, q_values, size, reachable=model.info(state).reachable
    )
    if not proposals:
        return left
    best = int(np.argmax(q_values)) if q_values is not None and len(q_values) else 0
    masks = proposal_masks(model, state, proposals[best], mask_size)
    right = render_masks(masks, (*STATE_KEYS, *ACTION_KEYS), tile=size // 4)
    out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    return out


def render_level(level: str, seeds: Sequence[int], size: int = 256) -> Image.Image:
    """Generated scenes of ``level`` side by side, each with its shortest plan drawn from the
    start (target footprints and arrows, numbered in order) and the reachable region tinted."""
    from sim.namo.levels import scene_properties
    from sim.namo.scene import generate_scene
    from sim.namo.transition import TransitionModel

    out = Image.new("RGB", (size * len(seeds), size), "white")
    for n, seed in enumerate(seeds):
        scene = generate_scene(seed, level=level)
        model = TransitionModel(scene)
        state = model.initial_state()
        plan = scene_properties(scene).plan
        img = render_scene(scene, state, plan, None, size, reachable=model.info(state).reachable)
        draw = ImageDraw.Draw(img)
        for k, p in enumerate(plan):
            draw.text((p.x * size / scene.width, (scene.height - p.y) * size / scene.height),
                      f"#{k + 1}", fill=(200, 0, 0))  # fmt: skip
        draw.text((4, 4), f"{level} {seed}: {len(plan)} moves", fill=(0, 0, 0))
        out.paste(img, (n * size, 0))
    return out


def main(argv: list[str] | None = None) -> None:
    """python -m sim.namo.render EPISODE.json [--decision G] --out FILE.png
    python -m sim.namo.render --level hard --seeds 1 2 3 --out FILE.png"""
    import argparse

    from sim.namo.episodes import EpisodeFileError, decision_items, episode_model, read_episode
    from sim.namo.scene import LEVELS

    ap = argparse.ArgumentParser(
        prog="python -m sim.namo.render",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument(
        "episode", nargs="?", help="episode_<e>.json from sim.namo.parallel_data_collection"
    )
    ap.add_argument("--level", choices=sorted(LEVELS), help="instead: generated scenes + plans")
    ap.add_argument(
        "--seeds", nargs="+", type=SEED_ARG, default=[0, 1, 2], help="scenes of --level"
    )
    ap.add_argument(
        "--decision", type=NON_NEGATIVE_INT, default=0, help="decision index in the episode"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=POSITIVE_INT, default=512, help="image side in pixels")
    args = ap.parse_args(argv)
    if (args.episode is None) == (args.level is None):
        raise SystemExit("give an episode file or --level (not both)")
    if args.level is not None:
        print(save_png(render_level(args.level, args.seeds, args.size // 2), args.out))
        return
    try:
        episode = read_episode(args.episode)
    except EpisodeFileError as err:
        ap.exit(1, f"{ap.prog}: error: {one_line(err)}\n")
    decisions = episode["decisions"]
    if not 0 <= args.decision < len(decisions):
        raise SystemExit(f"{args.episode}: no decision {args.decision} ({len(decisions)} exist)")
    state, proposals, q = decision_items(decisions[args.decision])
    img = render_decision(episode_model(episode), state, proposals, q, args.size)
    print(save_png(img, args.out))


if __name__ == "__main__":
    main()
