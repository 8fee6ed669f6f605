"""A PPO actor trained on the online loop, served over ROS, earns its in-process return.

Train a few PPO updates on Reacher-v5, export the deterministic actor (`python -m learning.export`
path), and run one episode of it through the nodes `sim.launch.py` and `policy.launch.py` start:
the sim bridge (action_source topic) and the policy node, which reads its topics from the model's
metadata and its pacing from the bridge's `/sim/spec`. The return summed from `/sim/reward` must
equal the in-process return of the same ONNX file on the same reset seed.

Pacing makes the comparison exact instead of statistical: the bridge steps 5 times per wall
second (real_time_factor 0.1 of Reacher's 50 Hz) and the policy ticks 4 times per bridge step,
so the action for observation k reaches the bridge long before it applies the next action, and
every step acts on its own observation, as in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from roboloop_bringup.launch_standin import load_launch_file  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
ENV, SEED, STEPS = "Reacher-v5", 1000, 50
REAL_TIME_FACTOR = 0.1  # 5 bridge steps per wall-clock second
POLICY_TICKS_PER_STEP = 4


def test_trained_ppo_actor_over_ros_earns_its_in_process_return(
    tmp_path: Path, ros_env: dict[str, str]
) -> None:
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float32

    from learning.export import export_checkpoint
    from learning.train import compose_config, run
    from roboloop_runtime import OnnxPolicy
    from roboloop_testing.ros_probe import RosProbe
    from sim.evaluate import evaluate_policy

    trained = run(
        compose_config(
            "train_ppo",
            [
                f"env_id={ENV}",
                f"output_root={tmp_path}",
                f"run_dir={tmp_path}/ppo",
                "training.num_iterations=2",
                "training.steps_per_iteration=256",
                "model.minibatch_size=64",
                "model.update_epochs=2",
                "online.eval_episodes=1",
                "online.progress_bar=false",
            ],
        )
    )
    model_path = tmp_path / "ppo_actor.onnx"
    meta = export_checkpoint(trained["last_ckpt"], model_path)
    assert meta["model_type"] == "actor" and "noise" not in meta["inputs"]
    in_process = evaluate_policy(ENV, OnnxPolicy(str(model_path), seed=0), episodes=1, seed=SEED)

    sim = load_launch_file(REPO / "launch/sim.launch.py", {"action_source": "topic"})
    sim.nodes[0].params.update(
        {
            "seed": SEED,
            "camera": 0,
            "max_episodes": 1,
            "real_time_factor": REAL_TIME_FACTOR,
            "wait_for_subscribers": 1,  # the probe hears every reward of the episode
        }
    )
    policy = load_launch_file(
        REPO / "launch/policy.launch.py", {"model_path": str(model_path), "device": "cpu"}
    )
    policy.nodes[0].params.update(
        {
            # robot-time rate; x the spec's real_time_factor = 20 ticks per wall second
            "control_rate_hz": 50.0 * POLICY_TICKS_PER_STEP,
            "stale_periods": 3.0 * POLICY_TICKS_PER_STEP,  # observations come every 4 ticks
        }
    )
    rewards: list[float] = []
    done: list[bool] = []
    applied: list[tuple[float, ...]] = []
    with RosProbe(name="online_actor_observer") as probe:
        reliable = QoSProfile(depth=STEPS * 2)
        probe.node.create_subscription(
            Float32, "/sim/reward", lambda m: rewards.append(m.data), reliable
        )
        probe.node.create_subscription(Bool, "/sim/done", lambda m: done.append(m.data), reliable)
        probe.node.create_subscription(
            JointState, "/sim/applied_action", lambda m: applied.append(tuple(m.effort)), reliable
        )
        procs = [
            policy.start(0, log_path=tmp_path / "policy.log", env=ros_env),
            sim.start(0, log_path=tmp_path / "sim.log", env=ros_env),
        ]

        def logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)

        try:

            def episode_over() -> bool:
                assert all(p.alive() for p in procs), logs()
                # three topics, three subscriptions: wait for each to deliver the last step
                return any(done) and len(rewards) >= STEPS and len(applied) >= STEPS

            try:
                probe.wait_for(episode_over, 90, "the bridge's episode, every step heard")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{logs()}") from None
        finally:
            for p in procs:
                p.stop()

    assert len(rewards) == len(applied) == STEPS, logs()
    assert all(any(a) for a in applied), "every step applied a policy action, none the zero one"
    assert sum(rewards) == pytest.approx(in_process.returns[0], rel=1e-4, abs=1e-4), logs()
