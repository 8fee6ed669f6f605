"""NAMO (navigation among movable obstacles) sim: scenes, kinematic transition model, masks,
MCTS, data-collection CLIs, planners + evaluation, MuJoCo plan check, rendering.

Modules (import what you need; this package imports nothing heavy itself):
``scene`` (generate_scene, doorway_scene), ``grid``, ``transition`` (TransitionModel, NamoState,
Proposal), ``masks`` (proposal_masks), ``mcts`` (MCTS), ``episodes``, ``planners``
(PLANNERS, register_planner, make_planner), ``evaluate_planners``, ``mujoco_model``, ``render``.
CLIs: ``python -m sim.namo.parallel_data_collection``, ``python -m sim.namo.mask_generation``,
``python -m sim.namo.evaluate_planners``, ``python -m sim.namo.render``. See docs/namo.md.
"""
