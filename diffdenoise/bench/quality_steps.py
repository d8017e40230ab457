"""Quality against sampler steps for ``make quality``: a bridge model at N = 1, 2, 4, 8.

Every N scores the same held-out items (``NAME@N`` systems beside the others); the table
gives SI-SDR, PESQ and STOI over all SNRs and the real-time factor at 48 kHz, and says
whether the best N beats N = 1 on PESQ.
"""

from __future__ import annotations

import copy

STEPS = (1, 2, 4, 8)


def step_systems(name: str, denoiser) -> dict:
    """``NAME@N`` -> the bridge denoiser sampling in N steps (seed 0), for every N."""
    systems = {}
    for n in STEPS:
        twin = copy.copy(denoiser)  # shares the model
        twin.steps = n
        systems[f"{name}@{n}"] = twin
    return systems


def steps_table(summary_all: dict, name: str, rtfs: dict[int, float]) -> tuple[str, tuple]:
    """The markdown table over N, and the ``(target, measured, passed)`` PESQ check."""
    lines = [
        "| steps N | network calls per segment | SI-SDR | PESQ | STOI | RTF at 48 kHz |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    pesq = {}
    for n in STEPS:
        m = summary_all[f"{name}@{n}"]
        pesq[n] = m["pesq"]
        lines.append(
            f"| {n} | {n} | {m['si_sdr']:.2f} | {m['pesq']:.3f} | {m['stoi']:.3f} | {rtfs[n]:.4f} |"
        )
    best = max(STEPS, key=lambda n: pesq[n])
    margin = pesq[best] - pesq[1]
    check = (
        f"{name}: its best N beats its own N = 1 on PESQ",
        f"best N = {best}: {pesq[best]:.3f} vs {pesq[1]:.3f} at N = 1 ({margin:+.3f})",
        best != 1 and margin > 0,
    )
    return "\n".join(lines), check


def steps_figure(path, summary_all: dict, name: str, rtfs: dict[int, float]) -> None:
    """SI-SDR, PESQ and RTF against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), layout="constrained")
    panels = (("si_sdr", "SI-SDR (dB)"), ("pesq", "PESQ"))
    for ax, (metric, label) in zip(axes, panels):
        ax.plot(STEPS, [summary_all[f"{name}@{n}"][metric] for n in STEPS], marker="o")
        for other in ("wiener", "default"):
            if other in summary_all:
                ax.axhline(summary_all[other][metric], ls="--", lw=0.8, label=other, color="grey")
        ax.set(xscale="log", xticks=STEPS, xticklabels=STEPS, xlabel="sampler steps N")
        ax.set(ylabel=label, title=f"{name}: {label} against steps")
        ax.legend(fontsize=8)
    axes[2].plot(STEPS, [rtfs[n] for n in STEPS], marker="o")
    axes[2].set(xscale="log", xticks=STEPS, xticklabels=STEPS, xlabel="sampler steps N")
    axes[2].set(ylabel="RTF at 48 kHz (2 threads)", title="cost")
    fig.savefig(path, dpi=100)
    plt.close(fig)
