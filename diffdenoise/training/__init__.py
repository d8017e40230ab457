"""Training: the loop written out, one optimizer step, validation, every distributed
concern, the run folder and its tracker, checkpoints and saved states, the LR schedule."""
