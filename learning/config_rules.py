"""The ranges of the numbers in training configs, checked before a run does any work.

`learning.train.run` checks every number of the composed config against RULES first, so an
absurd value (a negative learning rate, `batch_size=0`, `policy.gamma=1.5`, a seed below 0) is
one line naming the key, `learning.train: policy.gamma=1.5: must be a number in [0, 1]`, not a
traceback from inside torch or a run that trains on it. A rule is keyed by the leaf's name, the
same meaning wherever the key sits (`batch_size`, `data.batch_size`, `world_model.batch_size`).
Values written as interpolations (`${base_lr}`) are checked where they point. Lists of numbers
(`hidden_dims: [256, 256]`) are checked element by element. Cross-key rules (`n_action_steps`
<= `horizon`) stay with the code that owns them. tests/test_config_rules.py checks that every
number in configs/ has a rule and that every shipped config passes. The ranges themselves
(`Range`, `count`, `number`) are episode_dataset/ranges.py's, which the command lines use too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from episode_dataset.ranges import SEED, Range, count, number
from learning.errors import ConfigError

# The keys of each kind, by leaf name.
COUNTS = """
    batch_size minibatch_size num_iterations steps_per_iteration num_envs num_nodes
    horizon horizon_length obs_steps n_action_steps flow_steps sampling_steps sampler_steps
    steps imagine_horizon sequence_length best_of_n_samples num_critics num_qs
    hidden_dim hidden_dims actor_hidden_dims critic_hidden_dims model_dim n_heads num_heads
    num_layers emb_dim image_size state_dim deter_dim stoch classes cnn_depth mlp_layers
    actor_critic_layers lstm_hidden lstm_layers depth dim_mult kernel_size n_groups
    encoder_channels prompt_max_len patch_size time_embed_dim in_ch out_ch input_channels
    action_dim grid update_epochs gradient_steps utd_ratio gradient_accumulation_steps
    update_threads entropy_batch entropy_samples num_val_samples rollout_steps
    num_train_timesteps T_max log_every_n_steps buffer_size
    buffer_max_bytes video_size
""".split()
# (0 turns these off: sample_every_n_epochs, max_grad_norm, eval_every, checkpoint_every)
NON_NEGATIVE_COUNTS = """
    num_workers learning_starts start_training offline_steps online_steps eval_episodes
    eval_every eval_frequency log_every checkpoint_every patience aux_ch gpu_id
    sample_every_n_epochs
""".split()
POSITIVES = """
    base_lr lr learning_rate actor_lr critic_lr world_model_lr init_alpha init_temperature
    max_memory_gb replay_ratio ppo_clip clip_coef actor_critic_grad_clip
    world_model_grad_clip rank_temperature time_scale mlp_ratio eps atol rtol
""".split()
NON_NEGATIVES = """
    ent_coef vf_coef bc_alpha alpha aux_loss_weight rank_weight top_move_weight weight_decay
    kl_scale free_nats entropy_scale adaptive_p min_delta eta eta_min max_grad_norm
""".split()
PROBABILITIES = "gamma discount gae_lambda lambda_ kl_balance instant_prob mask_threshold".split()
FRACTIONS_BELOW_ONE = (
    "val_fraction test_fraction return_ema_decay unimix t_epsilon dropout".split()
)

RULES: dict[str, Range] = {
    **dict.fromkeys(COUNTS, count(1)),
    **dict.fromkeys(NON_NEGATIVE_COUNTS, count(0)),
    **dict.fromkeys(("seed", "split_seed", "eval_seed"), SEED),
    "max_epochs": count(1, also=(-1,)),  # -1: until stopped (Lightning's)
    "save_top_k": count(0, also=(-1,)),  # -1: keep all (Lightning's)
    "torch_threads": count(1, nullable=True),  # null: torch's default
    "check_val_every_n_epoch": count(1, nullable=True),  # null: by steps only (Lightning's)
    "crop_shape": count(1, nullable=True),  # [h, w]; null: no crop
    **dict.fromkeys(POSITIVES, number(0, low_open=True)),
    **dict.fromkeys(NON_NEGATIVES, number(0)),
    "gradient_clip_val": number(0, nullable=True),  # 0 or null: no clipping (Lightning's)
    **dict.fromkeys(PROBABILITIES, number(0, 1)),
    **dict.fromkeys(FRACTIONS_BELOW_ONE, number(0, 1, high_open=True)),
    **dict.fromkeys(("tau", "slow_critic_rate"), number(0, 1, low_open=True)),
    **dict.fromkeys(("beta_start", "beta_end"), number(0, 1, low_open=True, high_open=True)),
    # keys whose null means something there (a full dotted key's rule wins over its leaf's)
    "data.discount": number(0, 1, nullable=True),  # null: no returns computed
    "data.sequence_length": count(1, nullable=True),  # null: windows, not sequences
    "world_model.action_dim": count(1, nullable=True),  # null: the dataset's
}
# Left to their consumer: Lightning's `devices` takes an int, a list or "auto".
UNCHECKED = ("devices",)


def check(name: str, value: Any, where: str | None = None) -> None:
    """ConfigError `<where>=<value>: must be <rule>` unless the rule of the dotted key `where`,
    else of the leaf `name`, takes `value` (a list: every element); no rule: it passes."""
    rule = RULES.get(where or name) or RULES.get(name)
    if rule is None:
        return
    for item in value if isinstance(value, list | tuple) else [value]:
        if not rule.accepts(item):
            raise ConfigError(f"{where or name}={value!r}: must be {rule}")


def numbers(cfg: DictConfig | dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(dotted key, leaf name, value) of every value written in `cfg` (interpolations, which
    are checked where they point, and missing `???` values left out)."""
    node = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg

    def walk(node: Any, prefix: str) -> Iterator[tuple[str, str, Any]]:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                yield from walk(value, path)
            elif isinstance(value, list):
                written = [v for v in value if not _unwritten(v)]
                if written:
                    yield path, str(key), written
            elif not _unwritten(value):
                yield path, str(key), value

    yield from walk(node, "")


def _unwritten(value: Any) -> bool:
    """An interpolation or a missing `???` value."""
    return isinstance(value, str) and ("${" in value or value == "???")


def check_config(cfg: DictConfig | dict[str, Any]) -> None:
    """ConfigError (one line, the first offending key) for a number outside its rule."""
    for path, leaf, value in numbers(cfg):
        check(leaf, value, path)
