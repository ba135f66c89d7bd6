"""Training: the LightningModule, the LR schedule, the build steps of a run, callbacks, checkpoints,
resume and the LR finder."""
