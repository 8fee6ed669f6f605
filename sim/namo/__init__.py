"""NAMO (navigation among movable obstacles) sim: scenes, kinematic transition model, masks,
MCTS, data-collection CLIs, planners + evaluation, MuJoCo plan check, rendering.

Modules (import what you need; this package imports nothing heavy itself):
``scene`` (generate_scene, doorway_scene), ``grid``, ``transition`` (TransitionModel, NamoState,
Proposal), ``keys`` (mask-file keys, SEED001_ALIASES), ``masks`` (proposal_masks),
``mask_files`` (MaskFileError, load_sample), ``mcts`` (MCTS), ``episodes``, ``planners``
(PLANNERS, register_planner, make_planner), ``evaluate_planners``, ``mujoco_model``, ``render``,
and what the ROS nodes serve, torch- and MuJoCo-free: ``layout`` (q_scorer requests),
``scoring`` (OnnxQScorer), ``goal_generator`` (GoalGenerator).
CLIs: ``python -m sim.namo.parallel_data_collection``, ``python -m sim.namo.mask_generation``,
``python -m sim.namo.render`` (planner comparison with the learned planners:
``python -m learning.namo.evaluate_planners``). See docs/namo.md.
"""
