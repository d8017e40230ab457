"""diffdenoise: train an audio denoiser on one CPU or many GPUs, and apply it.

The public API; everything else is reached through its subpackage (``diffdenoise.data``,
``diffdenoise.models``, ``diffdenoise.training``, ``diffdenoise.inference``, ...).
"""

import importlib

from diffdenoise.common.version import VERSION as __version__

# Imported on first use: importing them here would load the inference modules with the
# package, and `python -m diffdenoise.stream` would then warn that it ran a module twice.
_LAZY = {
    "Denoiser": ("diffdenoise.inference.denoiser", "Denoiser"),
    "denoise_audio": ("diffdenoise.inference.denoiser", "denoise_audio"),
    "StreamingDenoiser": ("diffdenoise.inference.realtime", "StreamingDenoiser"),
    "OnnxDenoiser": ("diffdenoise.inference.export", "OnnxDenoiser"),
    "load_config": ("diffdenoise.config.loading", "load"),
    "build_model": ("diffdenoise.models.factory", "build_model"),
    "model_for": ("diffdenoise.models.factory", "model_for"),
}
__all__ = [
    "Denoiser",
    "OnnxDenoiser",
    "StreamingDenoiser",
    "__version__",
    "build_model",
    "denoise_audio",
    "load_config",
    "model_for",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'diffdenoise' has no attribute {name!r}")
