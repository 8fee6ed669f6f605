"""LightningModules that own networks, losses and samplers (one module per algorithm)."""
