"""ROS-free goal-generator logic on real ONNX models: scene checks, output checks, clipping."""

from __future__ import annotations

import numpy as np
import pytest
from roboloop_goal_generator.generator import GoalGenerator, SceneError, generate
from roboloop_goal_generator.reference_model import make_reference_generator
from sensor_msgs.msg import Image

from episode_dataset.codecs import MessageError, encode_image
from roboloop_runtime import ModelOutputError

K, S = 3, 8


def scene_msg(scene: np.ndarray) -> Image:
    height, width, encoding, step, data = encode_image(scene)
    return Image(height=height, width=width, encoding=encoding, step=step, data=data)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GoalGenerator]:
    root = tmp_path_factory.mktemp("goal_models")
    return {
        fault: GoalGenerator(make_reference_generator(root / f"{fault}.onnx", S, fault), K)
        for fault in (None, "nan_without_robot")
    }


def test_scene_in_proposals_out(models) -> None:
    scene = np.random.default_rng(0).random((20, 12, 5), dtype=np.float32)
    out = generate(models[None], scene_msg(scene), max_request_bytes=1 << 20)
    assert out.hwk.shape == (S, S, K) and out.hwk.dtype == np.float32 and out.clipped == 0
    assert 0.0 <= out.hwk.min() and out.hwk.max() <= 1.0
    assert np.abs(out.hwk[..., 0] - out.hwk[..., 1]).max() > 1e-3  # K noise draws


def test_bad_scenes_and_outputs_are_refused(models) -> None:
    good = np.random.default_rng(1).random((20, 12, 5), dtype=np.float32)
    nan = good.copy()
    nan[3, 4, 2] = np.nan
    no_robot = good.copy()
    no_robot[..., 0] = 0.0
    cases = [
        (Image(height=0, width=0, encoding="32FC5", step=0), 1 << 20, MessageError, "shape"),
        (scene_msg(nan), 1 << 20, MessageError, "nonfinite"),
        (scene_msg(good[..., :3]), 1 << 20, MessageError, "shape"),
        (scene_msg(good), 4000, MessageError, "too_large"),  # 4800 bytes
        (scene_msg(no_robot), 1 << 20, ModelOutputError, "nonfinite"),
    ]
    for msg, limit, error, reason in cases:
        with pytest.raises(error) as err:
            generate(models["nan_without_robot"], msg, max_request_bytes=limit)
        assert err.value.reason == reason
    with pytest.raises(SceneError, match="empty"):  # the planner's path, without the decoder
        models[None].propose(np.zeros((0, 4, 5), np.float32))


def test_values_outside_the_unit_range_are_clipped_and_counted(models) -> None:
    generator = models[None]
    scene = np.random.default_rng(2).random((S, S, 5), dtype=np.float32)

    class Stretched:  # the same model, its masks scaled to [-1, 2] (a graph without a clamp)
        def propose(self, scene: np.ndarray) -> np.ndarray:
            return generator.propose(scene) * 3.0 - 1.0

    out = generate(Stretched(), scene_msg(scene), 1 << 20)
    assert 0.0 <= out.hwk.min() and out.hwk.max() <= 1.0
    assert out.clipped == np.count_nonzero((out.hwk == 0.0) | (out.hwk == 1.0)) > 0


@pytest.mark.parametrize("image_size", [None, "big", 0])
def test_unusable_image_size_in_the_metadata_is_one_line(tmp_path, image_size) -> None:
    import json

    import onnx

    from roboloop_runtime import ModelLoadError

    path = make_reference_generator(tmp_path / "g.onnx", S)
    model = onnx.load(path)
    prop = next(p for p in model.metadata_props if p.key == "roboloop")
    meta = json.loads(prop.value)
    if image_size is None:
        del meta["image_size"]
    else:
        meta["image_size"] = image_size
    prop.value = json.dumps(meta)
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match="image_size"):
        GoalGenerator(path, K)
