"""Names of the NAMO mask-file keys: the Q-function's (seed 000 order), the goal generator's
(seed 001 names) and the one table that maps the seed-001 names onto seed-000 masks."""

from __future__ import annotations

import re

# The 11 state channels, in the order the network sees them (seed 000).
STATE_KEYS: tuple[str, ...] = (
    "robot",
    "goal",
    "movable",
    "static",
    "reachable",
    "robot_distance",
    "goal_distance",
    "combined_distance",
    "post_action_robot",
    "post_action_movable",
    "post_action_robot_distance",
)
# The 2 action channels: the object to push and that object at its proposed goal pose.
ACTION_KEYS: tuple[str, ...] = ("target_object", "target_goal")
TARGET_KEY = "goal_q_value"
STATE_CHANNELS = len(STATE_KEYS)
ACTION_CHANNELS = len(ACTION_KEYS)

FILE_GLOB = "episode_*_goal_*_proposal_*.npz"
FILE_RE = re.compile(r"^episode_(\d+)_goal_(\d+)_proposal_(\d+)\.npz$")

# What one state shares across its proposals vs what each proposal changes: the post-action
# channels depend on the proposal (where the robot ends up, where the objects are after it).
SHARED_STATE_KEYS: tuple[str, ...] = STATE_KEYS[:8]
POST_ACTION_KEYS: tuple[str, ...] = STATE_KEYS[8:]
SHARED_CHANNELS = len(SHARED_STATE_KEYS)
PER_PROPOSAL_CHANNELS = len(POST_ACTION_KEYS) + ACTION_CHANNELS

# Seed-001 (goal generator) names of four seed-000 state masks: mask files carry both names,
# and a file with only the seed-000 name still loads as a goal-generator sample.
SEED001_ALIASES: dict[str, str] = {
    "robot_image": "robot",
    "goal_image": "goal",
    "movable_objects_image": "movable",
    "static_objects_image": "static",
}
# The goal generator's scene channels (in this order) and the mask it learns to propose.
CONTEXT_KEYS: tuple[str, ...] = (
    "robot_image",
    "goal_image",
    "movable_objects_image",
    "static_objects_image",
    "target_object",
)
GOAL_MASK_KEY = "target_goal"
