"""Experiments built on the training loops: the ablation runner (`memmodel.training.ablation`)."""
