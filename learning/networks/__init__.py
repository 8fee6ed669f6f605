"""Plain nn.Modules with plain arguments (built from configs by Hydra `_target_`)."""
