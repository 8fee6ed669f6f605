"""Batch keys: the one place the keys of a training batch are named.

The episode format's own names (OBS, ACTIONS, REWARDS, DONES) are the batch keys of the same
data; the rest are what windows and the other data modules add. Shapes are per sample (the
DataLoader adds the leading B); H is the chunk length (`horizon`), T the `sequence_length`.
"""

from __future__ import annotations

from episode_dataset import ACTIONS, DONES, OBS, REWARDS

# Episode windows (learning/data/episode_datamodule.py).
#   OBS        {key: (obs_steps, *shape)}  history ending at step t
#   ACTIONS    (H, A)                      actions t .. t+H-1
#   REWARDS    (H,) float32                rewards t .. t+H-1, 0 past the episode end
#   DONES      (H,) bool                   stored dones, False past the episode end
TERMINALS = "terminals"  # (H,) bool: DONES of an episode that reached a terminal state
ACTION_IS_PAD = "action_is_pad"  # (H,) bool: step t+i lies past the episode end
NEXT_OBS = "next_obs"  # {key: (obs_steps, *shape)}: history ending at step t+H
CHUNK_RETURN = "chunk_return"  # () float32: sum_i gamma^i r_{t+i} over the chunk
BOOTSTRAP = "bootstrap"  # () float32: 1 where the target adds gamma^H Q(NEXT_OBS), else 0
VALID = "valid"  # () float32: 0 where NEXT_OBS is not in the data (chunk past a cut end)

# Sequences for recurrent models (same module): OBS {key: (T, *shape)}, ACTIONS (T, A),
# REWARDS, DONES, TERMINALS (T,), and
IS_FIRST = "is_first"  # (T,) bool: step is the first of its episode (reset recurrent state)
IS_PAD = "is_pad"  # (T,) bool: step lies past the episode end (episode shorter than T)

# NAMO Q-function (learning/namo/data.py).
STATE_MASKS = "state_masks"  # (11, S, S) float32
ACTION_MASKS = "action_masks"  # (2, S, S) float32
TARGET_Q = "target_q"  # (1,) float32
EPISODE_ID, GOAL_ID, PROPOSAL_ID = "episode", "goal", "proposal"  # () int64: one state = (e, g)

# NAMO goal masks (learning/generative/data.py).
CONTEXT = "context"  # (5, S, S) float32 in [0, 1]
TARGET = "target"  # (1, S, S) float32 in [0, 1]

__all__ = [
    "ACTIONS",
    "ACTION_IS_PAD",
    "ACTION_MASKS",
    "BOOTSTRAP",
    "CHUNK_RETURN",
    "CONTEXT",
    "DONES",
    "EPISODE_ID",
    "GOAL_ID",
    "IS_FIRST",
    "IS_PAD",
    "NEXT_OBS",
    "OBS",
    "PROPOSAL_ID",
    "REWARDS",
    "STATE_MASKS",
    "TARGET",
    "TARGET_Q",
    "TERMINALS",
    "VALID",
]
