"""RSSM world model (PlaNet / Dreamer family) trained offline from episode datasets:
`rssm` (latent dynamics), `networks` (observation encoder/decoder), `module` (the
LightningModule, its loss and exported graphs), `data` (sequences). docs/world_model.md."""
