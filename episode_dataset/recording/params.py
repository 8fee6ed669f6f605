"""The recorder's recording parameters: one table, one reading, for the node and bag import.

The recorder node declares these (plus its ROS-only ones) as ROS parameters; `import-bag` reads
the same names from the node's parameter file (`ros2_ws/src/roboloop_recorder/config/
recorder_topics.yaml`), so one file records live and imports a bag the same way, and a name
left out means the same default in both.

`control_rate_hz` means control steps per second of robot time everywhere (env_args
`control_rate_hz`); a robot run slower than real time has a `real_time_factor`, and the
recorded timeline then runs at control_rate_hz x real_time_factor steps per stamp second.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from episode_dataset.ranges import count, number
from episode_dataset.recording.session import SessionConfig
from episode_dataset.recording.topics import RecorderConfigError, TopicSpec, parse_topics

# env_args key of the control rate (robot steps per second), as training reads it
RATE_KEY = "control_rate_hz"
TOPIC_LISTS = ("topics", "types", "keys", "shapes", "fields")
# The default max_age_s in periods: below the aligner's half period with room for stamp jitter.
AUTO_MAX_AGE_PERIODS = 0.4

# name -> (default, description[, range]): what to record and how to align it.
RECORDING_PARAMETERS: dict[str, tuple[Any, ...]] = {
    "topics": (
        ["/sim/state", "/sim/applied_action", "/sim/reward", "/sim/done"],
        "Topics to record (parallel to types/keys/shapes/fields).",
    ),
    "types": (
        [
            "sensor_msgs/msg/JointState",
            "sensor_msgs/msg/JointState",
            "std_msgs/msg/Float32",
            "std_msgs/msg/Bool",
        ],
        "ROS type of each topic (Image, JointState, Float32MultiArray, Float32, Bool).",
    ),
    "keys": (
        ["obs/state", "actions", "rewards", "dones"],
        "Dataset key of each topic: obs/<name>, actions, rewards or dones.",
    ),
    "shapes": (
        ["10", "2", "", ""],
        "Per-step shape of each key, comma separated ('64,64,3'); '' for scalars.",
    ),
    "fields": (
        ["position", "effort", "", ""],
        "JointState field of each topic (position|velocity|effort); '' = default "
        "(effort for actions, else position).",
    ),
    "env_args_json": ("{}", "JSON stored as the dataset's env_args (env_name, env_kwargs...)."),
    "control_rate_hz": (
        50.0,
        "Control steps per second of robot time (stored as env_args.control_rate_hz; the "
        "default is Reacher-v5's, like the topic lists'); 0 = the spec's or env_args_json's.",
        number(0, 1000),
    ),
    "real_time_factor": (
        0.0,
        "Robot seconds per wall-clock second (stamps are wall-clock: the timeline runs at "
        "control_rate_hz x this per stamp second); 0 = the spec topic's, else 1.",
        number(0, 1000),
    ),
    "max_age_s": (
        0.0,
        "A key's sample may be this much older than the step's observation, else the step is "
        "stale (skipped). Must be below half a period of the recorded timeline; 0 = "
        f"{AUTO_MAX_AGE_PERIODS:g} of it (0.02 s at 20 steps/s of wall clock, 0.008 s on 50 Hz "
        "sim time).",
        number(0, 60),
    ),
    "headerless_anchor_key": (
        "actions",
        "Headerless messages (Float32, Bool) take the header stamp of this key's message that "
        "arrived nearest to them; '' = stamp them on arrival (see headerless_offset_periods).",
    ),
    "headerless_anchor_tolerance_s": (
        0.02,
        "Largest arrival-time gap between a headerless message and its anchor message.",
        number(0, 60),
    ),
    "headerless_offset_periods": (
        -1.0,
        "Without an anchor: headerless messages are stamped on arrival plus this many periods.",
        number(-100, 100),
    ),
    "reference_key": ("", "Key whose stamps drive the timeline; '' = first stamped obs key."),
    "future_tolerance_s": (
        1.0,
        "Messages stamped more than this ahead of the node clock at arrival are rejected "
        "(counted as future_stamp).",
        number(0, 3600),
    ),
    "record_on_activate": (True, "Start an episode when the node activates."),
    "restart_after_done": (True, "Start the next episode right after a done step."),
    "max_episodes": (
        0,
        "Stop recording after this many episodes (0 = unlimited).",
        count(0, high=2**31 - 1),
    ),
}


@dataclass(frozen=True)
class Recording:
    """What the recorder records and how: topics, env_args to store, rate and real-time factor."""

    topics: list[TopicSpec]
    env_args: dict[str, Any]
    control_rate_hz: float
    real_time_factor: float


def make_recording(
    topics: list[TopicSpec],
    *,
    env_args: Mapping[str, Any],
    control_rate_hz: float,
    real_time_factor: float,
    spec_env_args: Mapping[str, Any] | None = None,
    spec_real_time_factor: float | None = None,
    source: str = "parameters",
) -> Recording:
    """Resolve the rates. `env_args` are stored on top of the spec's. `control_rate_hz` /
    `real_time_factor` 0 mean "the spec's" (a real-time factor defaults to 1); a value set here
    that disagrees with the spec's, or an env_args control rate that disagrees with the rate
    recorded, is an error."""
    args = {**(spec_env_args or {}), **env_args}
    rate = _agree(control_rate_hz, args.get(RATE_KEY), "control_rate_hz", source, None)
    rtf = _agree(real_time_factor, spec_real_time_factor, "real_time_factor", source, 1.0)
    if rate is None:
        raise RecorderConfigError(
            f"no control rate in {source}: set parameter control_rate_hz (robot steps per second)"
        )
    for value, name in ((rate, "control_rate_hz"), (rtf, "real_time_factor")):
        if not (math.isfinite(value) and value > 0):
            raise RecorderConfigError(f"{name} {value:g} must be a positive number")
        # a spec's (or env_args') value is held to the range the parameter itself declares
        rule = RECORDING_PARAMETERS[name][2]
        if not rule.accepts(value):
            raise RecorderConfigError(f"{name} {value:g} of {source} must be {rule}")
    return Recording(topics, {**args, RATE_KEY: rate}, rate, rtf)


def _agree(
    param: float, given: Any, name: str, source: str, default: float | None
) -> float | None:
    """The parameter when set (0 = unset), checked against the source's value, else that."""
    if given is None:
        return param or default
    given = float(given)
    if param and abs(param - given) > 1e-9 * max(abs(given), 1.0):
        raise RecorderConfigError(
            f"parameter {name} {param:g} disagrees with {given:g} of {source}"
        )
    return given


def json_object_parameter(name: str, text: str) -> dict[str, Any]:
    """A string parameter holding a JSON object (the recorder's env_args_json, the sim bridge's
    env_kwargs_json) -> a dict, or one RecorderConfigError line naming the parameter."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecorderConfigError(f"parameter {name} {text!r}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise RecorderConfigError(f"parameter {name} {text!r}: not a JSON object {{...}}")
    return value


def env_args_from_json(text: str) -> dict[str, Any]:
    """Parameter env_args_json -> a dict (one-line error otherwise)."""
    return json_object_parameter("env_args_json", text)


def session_config(
    params: Mapping[str, Any], recording: Recording, source: str = "parameters"
) -> SessionConfig:
    """The alignment and episode settings of a recording, from its parameters. A max_age_s
    that is not below half a period of the recorded timeline (the aligner's rule: no sample
    may serve two steps) is one RecorderConfigError line naming `source`."""
    rate, rtf = recording.control_rate_hz, recording.real_time_factor
    period = 1.0 / (rate * rtf)  # stamp seconds per step
    max_age = float(params["max_age_s"]) or AUTO_MAX_AGE_PERIODS / (rate * rtf)
    if not max_age < period / 2:
        raise RecorderConfigError(
            f"{source}: parameter max_age_s {max_age:g} must be below half a period, "
            f"{period / 2:g} s (control_rate_hz {rate:g} x real_time_factor {rtf:g} = "
            f"{rate * rtf:g} steps per stamp second)"
        )
    return SessionConfig(
        control_rate_hz=rate,
        real_time_factor=rtf,
        max_age_s=max_age,
        headerless_anchor_key=str(params["headerless_anchor_key"]),
        headerless_anchor_tolerance_s=float(params["headerless_anchor_tolerance_s"]),
        headerless_offset_periods=float(params["headerless_offset_periods"]),
        reference_key=str(params["reference_key"]),
        restart_after_done=bool(params["restart_after_done"]),
        max_episodes=int(params["max_episodes"]),
        future_tolerance_s=float(params["future_tolerance_s"]),
    )


def read_params_file(path: str | Path, node: str = "recorder") -> dict[str, Any]:
    """The recording parameters of a ROS parameter file (`<node or /**>: ros__parameters:`),
    each one the file leaves out at its default; other parameters (the node's own) are
    ignored. One-line RecorderConfigError naming the file otherwise."""
    import yaml  # PyYAML: already a dependency of the ROS wheels and of Hydra

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeError, yaml.YAMLError) as e:
        detail = " ".join(str(e).split())
        raise RecorderConfigError(f"{path}: cannot read the parameter file: {detail}") from None
    sections = (
        {
            name: body["ros__parameters"]
            for name, body in (doc or {}).items()
            if isinstance(body, dict) and isinstance(body.get("ros__parameters"), dict)
        }
        if isinstance(doc, dict)
        else {}
    )
    found = next((sections[n] for n in (node, f"/{node}", "/**") if n in sections), None)
    if found is None:
        raise RecorderConfigError(
            f"{path}: no '{node}:' or '/**:' section with ros__parameters (a ROS parameter file)"
        )
    params = {name: default for name, (default, *_) in RECORDING_PARAMETERS.items()}
    for name, (_, _, *rule) in RECORDING_PARAMETERS.items():
        if name in found:
            value, default = found[name], params[name]
            if not _same_kind(value, default):
                raise RecorderConfigError(
                    f"{path}: parameter {name} must be like {default!r}, got {value!r}"
                )
            if rule and not rule[0].accepts(value):  # the range the node declares too
                raise RecorderConfigError(
                    f"{path}: parameter {name} must be {rule[0]}, got {value!r}"
                )
            params[name] = [str(v) for v in value] if isinstance(value, list) else value
    return params


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a parameter file's value fits the parameter's type, as the node's declaration
    would take it (an integer where a float is declared too: YAML writes 1.0 as 1 often)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def recording_from_params(params: Mapping[str, Any], source: str = "parameters") -> Recording:
    """Topics and rates from the parameter lists (the way a robot without a spec is recorded)."""
    topics = parse_topics(*(list(params[n]) for n in TOPIC_LISTS))
    return make_recording(
        topics,
        env_args=env_args_from_json(str(params["env_args_json"])),
        control_rate_hz=float(params["control_rate_hz"]),
        real_time_factor=float(params["real_time_factor"]),
        source=source,
    )
