"""What every layer shares and nothing of diffdenoise below it: atomic file writes, the
progress bar, the command-line helpers every command uses, spectrogram plots."""
