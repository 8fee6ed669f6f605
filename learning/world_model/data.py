"""Episode sequences for the world model: `EpisodeDataModule(sequence_length=T)` (the one
windowing, learning/data/episode_datamodule.py) plus what a world model refuses up front."""

from __future__ import annotations

from typing import Any

from episode_dataset import DatasetError
from learning.data.episode_datamodule import EpisodeDataModule
from learning.errors import ConfigError
from learning.world_model.networks import image_keys


class WorldModelDataModule(EpisodeDataModule):
    """(B, T) sequences (obs, actions, rewards, terminals, is_first, is_pad) of one dataset.

    Refused with one line naming the file or key, before a model is built: an observation key
    the config asks for that the dataset lacks, an image the CNN cannot take, and an
    `action_dim` (the config's expectation; None: the dataset's) other than the dataset's; the
    base class refuses a `sequence_length` longer than every training episode and pads
    shorter episodes among longer ones (is_pad).
    """

    def __init__(
        self, path: str, sequence_length: int, action_dim: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(path, sequence_length=sequence_length, **kwargs)
        self.expected_action_dim = action_dim

    def _prepare(self) -> None:
        if self._prepared:
            return
        try:
            super()._prepare()
        except KeyError as err:  # an obs key the config names is not in the file
            raise DatasetError(str(err.args[0])) from None
        self._prepared = False  # until the checks below pass
        dim = int(self.reader.action_spec.shape[0])
        if self.expected_action_dim is not None and self.expected_action_dim != dim:
            raise ConfigError(
                f"world_model.action_dim={self.expected_action_dim} disagrees with the "
                f"dataset's action_dim {dim} ({self.path}; null: take the dataset's)"
            )
        specs = {
            k: {"shape": s.shape, "feature_type": s.feature_type}
            for k, s in self.obs_specs.items()
        }
        image_keys(specs)
        self._prepared = True
