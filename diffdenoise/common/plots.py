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


def quality_figure(path, histories: dict, tables: dict, holdout: str = "") -> None:
    """Validation curves, SI-SDR and PESQ per input SNR, SI-SDR gain per noise type.

    Each system keeps one colour in every panel; the held-out noise is marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
    colour = {name: f"C{i}" for i, name in enumerate(tables["snr"]["all"])}
    for name, h in histories.items():
        if h["val"]:
            axes[0, 0].plot(*zip(*h["val"]), marker="o", label=name, color=colour.get(name))
    axes[0, 0].set(xlabel="optimizer step", ylabel="validation loss", title="training")
    axes[0, 0].set_yscale("log")
    by_snr = {b: v for b, v in tables["snr"].items() if b != "all"}
    snrs = [float(b.split()[0]) for b in by_snr]
    systems = list(tables["snr"]["all"])
    for ax, metric, label in ((axes[0, 1], "si_sdr", "SI-SDR (dB)"), (axes[1, 0], "pesq", "PESQ")):
        for name in systems:
            values = [by_snr[b][name][metric] for b in by_snr]
            ax.plot(snrs, values, marker="o", label=name, color=colour[name])
        ax.set(xlabel="input SNR (dB)", ylabel=label, title=f"{label} per input SNR")
    by_noise = {k: v for k, v in tables["noise"].items() if k != "all"}
    width = 0.8 / max(len(systems) - 1, 1)
    for i, name in enumerate(s for s in systems if s != "noisy"):
        gains = [by_noise[k][name]["si_sdr_delta"] for k in by_noise]
        x = np.arange(len(by_noise)) + i * width
        axes[1, 1].bar(x, gains, width, label=name, color=colour[name])
    axes[1, 1].axhline(0, color="black", lw=0.8)
    names = [f"{k}\n(held out)" if k == holdout else k for k in by_noise]
    axes[1, 1].set_xticks(np.arange(len(by_noise)) + width * (len(systems) - 2) / 2, names)
    axes[1, 1].set(ylabel="SI-SDR improvement (dB)", title="per noise type")
    for ax in axes.flat:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
