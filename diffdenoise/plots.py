"""Figures: stacked spectrograms on one shared colour scale."""

from __future__ import annotations

import numpy as np


def spectrogram_figure(signals: dict[str, np.ndarray], rate: int, n_fft: int = 512):
    """One panel per named ``(time,)`` signal, stacked, with a shared dB colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hop = n_fft // 4
    window = np.hanning(n_fft)
    specs = {}
    for name, x in signals.items():
        x = np.pad(np.asarray(x, dtype=np.float64), (0, max(0, n_fft - len(x))))
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * window
        specs[name] = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)).T + 1e-8)
    vmax = max(s.max() for s in specs.values())
    fig, axes = plt.subplots(
        len(specs), 1, figsize=(8, 2.4 * len(specs)), squeeze=False, layout="constrained"
    )
    for ax, (name, s) in zip(axes[:, 0], specs.items()):
        image = ax.imshow(
            s,
            origin="lower",
            aspect="auto",
            vmin=vmax - 80,
            vmax=vmax,
            extent=(0, s.shape[1] * hop / rate, 0, rate / 2000),
            cmap="magma",
        )
        ax.set_title(name)
        ax.set_ylabel("kHz")
    axes[-1, 0].set_xlabel("seconds")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="dB")
    return fig
