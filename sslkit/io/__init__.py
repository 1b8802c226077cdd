"""Files of a run: atomic checkpoints, the run directory, the checkpoint layouts of the field."""
