"""Root configs: every training command written in the seeds still composes, and each of its
overrides reaches the object it configures; the shared run block applies to every config; no
root key is dead; one spelling for splits."""

# ruff: noqa: E501 (seed command lines are kept verbatim)
from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytest
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from learning.checkpoint import CheckpointError
from learning.train import CONFIG_DIR, compose_config, run

ROOT_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("train_*.yaml"))
# Configs with an `online:` section train on an env (learning.online.loop), without `data`.
OFFLINE_CONFIGS = [
    n for n in ROOT_CONFIGS if "online:" not in (CONFIG_DIR / f"{n}.yaml").read_text()
]

# Verbatim from the seeds. 001 (sage_learning training guide): `src/train_generative.py` is
# `python -m learning.train` here, same config names. 000 (Q-function plan): the script's
# default config is `train_q_function`.
SEED_COMMANDS = [
    "python src/train_generative.py --config-name=train_fb_flow_matching",
    "python src/train_generative.py --config-name=train_fb_flow_matching trainer=multi_gpu",
    "python src/train_generative.py --config-name=train_fb_flow_matching model.sampler.method=dopri5",
    "python src/train_generative.py --config-name=train_hf_diffusion",
    "python src/train_generative.py --config-name=train_hf_diffusion model.sampler.sampler_type=ddpm",
    "python src/train_generative.py --config-name=train_fb_flow_matching trainer=multi_gpu trainer.devices=4",
    "python src/train_generative.py --config-name=train_fb_flow_matching batch_size=128",
    "python src/train_generative.py --config-name=train_fb_flow_matching base_lr=5e-5",
    "python src/train_generative.py --config-name=train_fb_flow_matching data.data_dir=/path/to/data",
    "python src/train_generative.py --config-name=train_fb_flow_matching max_epochs=500",
    "python src/train_generative.py --config-name=train_fb_flow_matching ckpt_path=/path/to/checkpoint.ckpt",
    "python src/train_generative.py --config-name=train_hf_diffusion model.path.beta_schedule=linear",
    "python src/train_generative.py --config-name=train_hf_diffusion sampling_steps=20",
    "python src/train_generative.py --config-name=train_fb_flow_matching model.path.scheduler=cosine",
    "python train_q_function.py data_dir=../mcts_training_masks gpu_id=0 batch_size=64 max_epochs=100",
]  # fmt: skip
SCRIPT_CONFIGS = {"train_q_function.py": "train_q_function"}


def parse(command: str) -> tuple[str, list[str]]:
    """(config name, overrides) of a seed command line."""
    words = shlex.split(command)[1:]
    script, args = words[0], words[1:]
    name = SCRIPT_CONFIGS.get(Path(script).name)
    overrides = []
    for arg in args:
        if arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    assert name is not None, command
    return name, overrides


def value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def trainer_kwargs(cfg: Any) -> dict[str, Any]:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("callbacks")
    return kwargs


def built_trainer(cfg: Any) -> Any:
    return instantiate(trainer_kwargs(cfg), logger=False, enable_checkpointing=False)


def ckpt_refused(cfg: Any, tmp_path: Path) -> str:
    """The path `learning.train.run` refuses to resume from (it checks before any work)."""
    cfg = cfg.copy()
    cfg.run_dir = str(tmp_path / "run")
    with pytest.raises(CheckpointError) as err:
        run(cfg)
    return str(err.value)


# Where each override lands: (cfg, model, datamodule, tmp_path) -> the value it set.
EFFECTS: dict[str, Callable[..., Any]] = {
    "batch_size": lambda c, m, d, t: d.batch_size,
    "base_lr": lambda c, m, d, t: m.optimizer_factory.keywords["lr"],
    "max_epochs": lambda c, m, d, t: built_trainer(c).max_epochs,
    "data.data_dir": lambda c, m, d, t: str(d.data_dir),
    "data_dir": lambda c, m, d, t: str(d.data_dir),
    "ckpt_path": lambda c, m, d, t: c.ckpt_path if c.ckpt_path in ckpt_refused(c, t) else None,
    "gpu_id": lambda c, m, d, t: built_trainer(c).device_ids[0],  # CPU: the one device, 0
    "model.sampler.method": lambda c, m, d, t: m.sampler.method,
    "model.sampler.sampler_type": lambda c, m, d, t: m.sampler.sampler_type,
    "model.path.scheduler": lambda c, m, d, t: m.path.scheduler_name,
    "model.path.beta_schedule": lambda c, m, d, t: m.path.noise_scheduler.config.beta_schedule,
    "sampling_steps": lambda c, m, d, t: m.sampler.steps,
    # DDP needs GPUs to build a Trainer: check the strategy object and the Trainer arguments.
    "trainer": lambda c, m, d, t: (
        "multi_gpu"
        if isinstance(instantiate(c.trainer.strategy), DDPStrategy)
        and trainer_kwargs(c)["sync_batchnorm"] is True
        else None
    ),
    "trainer.devices": lambda c, m, d, t: trainer_kwargs(c)["devices"],
}


@pytest.mark.parametrize("command", SEED_COMMANDS)
def test_seed_command_composes_and_its_overrides_take_effect(command: str, tmp_path: Path) -> None:
    name, overrides = parse(command)
    cfg = compose_config(name, overrides)
    model = instantiate(cfg.model, _convert_="all")
    data = instantiate(cfg.data)
    for override in overrides:
        key, text = override.split("=", 1)
        assert EFFECTS[key](cfg, model, data, tmp_path) == value(text), override
    if not overrides:  # the defaults build and train on CPU (16-mixed falls back to 32-true)
        assert built_trainer(cfg).max_epochs == cfg.max_epochs


@pytest.mark.parametrize("name", ROOT_CONFIGS)
def test_every_config_shares_the_run_block(name: str, tmp_path: Path) -> None:
    overrides = [f"output_root={tmp_path}", "seed=7"]
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra.compose(name, overrides=overrides, return_hydra_config=True)
        run_dir = Path(cfg.run_dir)
        assert run_dir.parent == tmp_path / cfg.name
        assert cfg.hydra.run.dir == str(run_dir) and cfg.hydra.job.chdir is False
        if name in OFFLINE_CONFIGS:
            assert cfg.data.split_seed == 7  # the shared seed reaches the split


# Root keys `learning.train.run` reads itself; every other root key must feed some `${...}`.
READ_BY_TRAIN = {"name", "seed", "ckpt_path", "model_dims", "torch_threads", "run_dir", "data"}
READ_BY_TRAIN |= {"model", "online", "env_id", "training"}  # the last 3: learning.online.loop
READ_BY_TRAIN |= {"dataset"}  # learning.online.loop too: the offline data (train_acrlpd)
READ_BY_TRAIN |= {"logger"}  # learning.trackers, for both paths


# network_type options and the network each picks (flow-family configs).
NETWORKS = {
    p.stem: OmegaConf.load(CONFIG_DIR / "network" / p.name)._target_
    for p in (CONFIG_DIR / "network_type").glob("*.yaml")
}


@pytest.mark.parametrize("name", ROOT_CONFIGS)
def test_no_dead_root_keys(name: str) -> None:
    cfg = compose_config(name)
    text = OmegaConf.to_yaml(cfg, resolve=False)
    if cfg.get("model", {}).get("network", {}).get("_target_") in NETWORKS.values():
        for net in NETWORKS:  # keys read by a network_type option count (model_dim)
            text += OmegaConf.to_yaml(compose_config(name, [f"network_type={net}"]), resolve=False)
    if "policy" in cfg.get("model", {}):  # Q-chunking: keys read by a policy option count
        for policy in sorted(p.stem for p in (CONFIG_DIR / "policy").glob("*.yaml")):
            text += OmegaConf.to_yaml(compose_config(name, [f"policy={policy}"]), resolve=False)
    dead = [k for k in cfg if k not in READ_BY_TRAIN | {"trainer"} and "${" + k not in text]
    assert not dead, f"{name}: keys nothing reads: {dead}"


@pytest.mark.parametrize("name", OFFLINE_CONFIGS)
def test_one_spelling_for_splits(name: str) -> None:
    inputs = {"train_q_function": ["data_dir=d"]}.get(name, [])
    if OmegaConf.is_missing(compose_config(name), "dataset"):  # `dataset: ???` (episode data)
        inputs.append("dataset=x.hdf5")
    cfg = compose_config(name, [*inputs, "data.val_fraction=0.25", "data.split_seed=3"])
    data = instantiate(cfg.data)
    # Episode and Q-function modules keep their parts for learning.data.split; goal masks a value.
    val = data.fractions["val"] if hasattr(data, "fractions") else data.val_fraction
    assert (val, data.split_seed) == (0.25, 3)
