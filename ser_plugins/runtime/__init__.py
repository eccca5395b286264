"""Below data and training: atomic files, locks, seeding, checkpoints, the process-group primitives."""
