"""Models: the spectral mask (the default), its causal streaming form, the waveform U-Net,
their shared blocks and the Triton kernel; the objectives (predictive, bridge), losses and
signal metrics; and the factory that turns a config into a model."""
