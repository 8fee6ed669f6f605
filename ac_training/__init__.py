"""Seed 003's command line for Q-chunking (ac_training/scripts/train_acrlpd_pi0.py): a thin
layer over `python -m learning.train --config-name=train_acrlpd` (docs/qchunking.md)."""
