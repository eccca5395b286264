"""Training one fold: the trainer, checkpoints, seeding."""
