"""diffdenoise: train an audio denoiser on one CPU or many GPUs, and apply it."""

__version__ = "0.1.0"

from diffdenoise.denoiser import Denoiser, denoise_audio

__all__ = ["Denoiser", "__version__", "denoise_audio"]
