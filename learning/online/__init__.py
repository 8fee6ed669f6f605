"""Online RL: one loop (collection, storage, evaluation, logging, checkpoints) for every
algorithm; the algorithms (learning.algorithms.ppo, .sac) implement `OnlineAlgorithm`."""
