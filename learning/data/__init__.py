"""LightningDataModules over the episode dataset format (`episode_dataset`)."""
