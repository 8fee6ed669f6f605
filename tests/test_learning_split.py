"""The one split (learning/data/split.py) behind the episode, NAMO Q-function and goal-mask data
modules: the same seed gives the split each module gave before they shared it."""

from __future__ import annotations

from pathlib import Path

import pytest

from learning.data.split import split_groups
from learning.generative.data import split_files


def test_episode_split_is_the_one_it_was() -> None:
    # EpisodeDataModule's cut order; expected values from its own split before this module.
    episodes = [f"ep_{i}" for i in range(10)]
    parts = split_groups(episodes, {"val": 0.2, "test": 0.1, "train": None}, seed=1)
    assert parts["val"] == ["ep_4", "ep_8"] and parts["test"] == ["ep_7"]
    assert parts["train"] == ["ep_0", "ep_1", "ep_2", "ep_3", "ep_5", "ep_6", "ep_9"]


def test_namo_split_is_the_one_it_was() -> None:
    # QFunctionDataModule's cut order (train first); values from its own split before.
    parts = split_groups(list(range(12)), {"train": None, "val": 0.1, "test": 0.1}, seed=0)
    assert parts == {"train": [0, 2, 3, 4, 5, 6, 7, 9, 10, 11], "val": [8], "test": [1]}


def test_every_nonzero_fraction_gets_a_group_and_train_keeps_one() -> None:
    parts = split_groups(list(range(3)), {"val": 0.01, "test": 0.0, "train": None}, seed=0)
    assert [len(parts[k]) for k in ("val", "test", "train")] == [1, 0, 2]
    with pytest.raises(ValueError, match="val=0.5, test=0.5 leaves no train group out of 2"):
        split_groups(["a", "b"], {"val": 0.5, "test": 0.5, "train": None}, seed=0)
    with pytest.raises(ValueError, match="fractions must be >= 0"):
        split_groups(["a", "b"], {"val": -0.1, "train": None}, seed=0)
    with pytest.raises(ValueError, match="exactly one part must take the rest"):
        split_groups(["a", "b"], {"val": 0.5, "train": 0.5}, seed=0)


def test_goal_mask_split_keeps_an_episode_together() -> None:
    files = [Path(f"d/episode_{e}_goal_0_proposal_{p}.npz") for e in range(6) for p in range(3)]
    files += [Path(f"d/scene_{i}.npz") for i in range(4)]  # no episode: one group per file
    train, val = split_files(files, 0.2, seed=3)
    assert sorted(train + val) == sorted(files) and not set(train) & set(val)
    assert len(val) in (2, 3, 4, 6)  # two groups: files or episodes of three proposals
    episode = {f.name.split("_goal")[0] for f in val if f.name.startswith("episode")}
    assert all(sum(f.name.startswith(e + "_") for f in val) == 3 for e in episode)
    assert split_files(files, 0.2, seed=3) == (train, val)
