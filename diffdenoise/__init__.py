"""diffdenoise: train an audio denoiser on one CPU or many GPUs, and apply it."""

import importlib

__version__ = "0.1.0"

# Imported on first use: importing them here would load diffdenoise.stream with the
# package, and `python -m diffdenoise.stream` would then warn that it ran a module twice.
_LAZY = {
    "Denoiser": "diffdenoise.inference.denoiser",
    "denoise_audio": "diffdenoise.inference.denoiser",
    "StreamingDenoiser": "diffdenoise.inference.realtime",
}
__all__ = ["Denoiser", "StreamingDenoiser", "__version__", "denoise_audio"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffdenoise' has no attribute {name!r}")
