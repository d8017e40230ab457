"""``python -m diffdenoise.quality``: the original recipe against ours, at one CPU budget.

Trains ``configs/seed.yaml`` (the original network and recipe) and ``configs/default.yaml``
(U-Net, multi-resolution STFT, EMA) on the demo corpus at 16 kHz, each for the same
wall-clock budget, then scores both, the noisy input and the Wiener baseline on the
held-out demo validation files at -5..15 dB SNR. Writes ``bench/quality.md`` (tables and
targets) and ``bench/quality.png`` (training curves, SI-SDR improvement per SNR).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from diffdenoise import evaluate
from diffdenoise.baseline import wiener
from diffdenoise.denoiser import Denoiser
from diffdenoise.metrics import si_sdr

ROOT = Path(__file__).resolve().parents[1]
SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)
RECIPES = ("seed", "default")
AT_16K = ["data.sample_rate=16000", "data.segment=16000"]


def train(recipe: str, minutes: float, shards: Path, runs: Path) -> Path:
    """One budgeted single-process CPU run; returns its run folder."""
    run = runs / f"quality-{recipe}"
    args = [
        f"configs/{recipe}.yaml", *AT_16K,
        f"data.train_shards={shards}/train-*.tar", f"data.val_shards={shards}/val-*.tar",
        "data.num_workers=1", "train.max_epochs=0", "train.max_steps=0",
        f"train.max_minutes={minutes}", "train.val_every=250", "checkpoint.every=100000",
        "train.mixed_precision=no", "log.wandb_mode=disabled", "log.every=25",
        f"train.runs_dir={runs}", f"train.run_name={run.name}",
    ]  # fmt: skip
    subprocess.run(["rm", "-rf", str(run)], check=True)
    print(f"training {recipe} for {minutes:g} CPU minutes -> {run}", flush=True)
    subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT, check=True)
    return run


def curves(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train/total"]) for r in rows if "train/total" in r]
    val = [(r["step"], r["val/total"]) for r in rows if "val/total" in r]
    return {"train": train, "val": val}


def clean_fidelity(systems: dict, items: list) -> dict[str, float]:
    """Mean SI-SDR of each system's output for clean input, against that input."""
    seen, scores = set(), {name: [] for name in systems}
    for item in items:
        base = item.key.split("@")[0]
        if base in seen:
            continue
        seen.add(base)
        for name, fn in systems.items():
            scores[name].append(float(si_sdr(fn(item.clean, item.rate), item.clean)))
    return {name: float(np.mean(v)) for name, v in scores.items()}


def verdicts(summary: dict, fidelity: dict) -> list[tuple[str, str, bool]]:
    default, seed = summary["all"]["default"], summary["all"]["seed"]
    gain = default["si_sdr_delta"] - seed["si_sdr_delta"]
    buckets = [b for b in summary if b != "all"]
    margins = {b: summary[b]["default"]["si_sdr"] - summary[b]["wiener"]["si_sdr"] for b in buckets}
    top = summary[buckets[-1]]
    return [
        ("default beats seed by >= 3 dB SI-SDR improvement", f"{gain:+.2f} dB", gain >= 3),
        (
            "default beats the Wiener baseline at every SNR (SI-SDR)",
            ", ".join(f"{b}: {m:+.2f}" for b, m in margins.items()),
            all(m > 0 for m in margins.values()),
        ),
        (
            f"no harm at {buckets[-1]}: output SI-SDR >= input",
            f"{top['default']['si_sdr']:.2f} vs {top['noisy']['si_sdr']:.2f} dB",
            top["default"]["si_sdr"] >= top["noisy"]["si_sdr"],
        ),
        (
            "clean input comes out >= 25 dB SI-SDR",
            f"{fidelity['default']:.2f} dB",
            fidelity["default"] >= 25,
        ),
    ]


def report(summary, fidelity, checks, minutes, runs_info) -> str:
    lines = [
        "# Quality at equal CPU budget",
        "",
        f"Each recipe trained for {minutes:g} wall-clock minutes on this CPU (16 kHz demo "
        "corpus), then scored on the held-out demo validation files at each SNR.",
        "",
        "| recipe | steps | parameters |",
        "|---|---:|---:|",
        *[f"| {k} | {v['steps']} | {v['params']} |" for k, v in runs_info.items()],
        "",
        evaluate.markdown(summary),
        "",
        "SI-SDR of the output for a clean input (against itself): "
        + ", ".join(f"{k} {v:.2f} dB" for k, v in fidelity.items()),
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *[f"| {t} | {m} | {'PASS' if ok else 'FAIL'} |" for t, m, ok in checks],
    ]
    return "\n".join(lines) + "\n"


def plot(path: Path, histories: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for name, h in histories.items():
        left.plot(*zip(*h["train"]), alpha=0.5, label=f"{name} train")
        if h["val"]:
            left.plot(*zip(*h["val"]), marker="o", label=f"{name} validation")
    left.set(xlabel="optimizer step", ylabel="loss (each recipe's own)", title="training")
    left.set_yscale("log")
    left.legend(fontsize=8)
    buckets = [b for b in summary if b != "all"]
    systems = [s for s in summary["all"] if s != "noisy"]
    width = 0.8 / len(systems)
    for i, name in enumerate(systems):
        gains = [summary[b][name]["si_sdr_delta"] for b in buckets]
        right.bar(np.arange(len(buckets)) + i * width, gains, width, label=name)
    right.axhline(0, color="black", lw=0.8)
    right.set_xticks(np.arange(len(buckets)) + width * (len(systems) - 1) / 2, buckets)
    right.set(xlabel="input SNR", ylabel="SI-SDR improvement (dB)", title="held-out test")
    right.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffdenoise.quality", description=__doc__)
    p.add_argument("--minutes", type=float, default=6.0, help="training budget per recipe")
    p.add_argument("--shards", type=Path, default=ROOT / "shards" / "demo")
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "bench")
    p.add_argument("--skip-training", action="store_true", help="score the existing runs")
    args = p.parse_args(argv)
    started = time.time()
    if not (args.shards / "manifest.json").exists():
        subprocess.run(["make", "--no-print-directory", "shards"], cwd=ROOT, check=True)
    runs = {
        r: (
            args.runs / f"quality-{r}"
            if args.skip_training
            else train(r, args.minutes, args.shards, args.runs)
        )
        for r in RECIPES
    }
    models = {r: Denoiser.from_checkpoint(run / "best.pt", device="cpu") for r, run in runs.items()}
    systems = {**models, "wiener": wiener}
    items = list(evaluate.shard_items(f"{args.shards}/val-*.tar", SNRS, []))
    summary = evaluate.summarise(evaluate.run(items, systems))
    fidelity = clean_fidelity(systems, items)
    checks = verdicts(summary, fidelity)
    info = {}
    for r, run in runs.items():
        h = curves(run)
        params = sum(v.numel() for v in models[r].model.parameters())
        info[r] = {
            "steps": h["train"][-1][0] if h["train"] else 0,
            "params": f"{params / 1e6:.2f} M",
        }
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(summary, fidelity, checks, args.minutes, info)
    (args.out / "quality.md").write_text(text)
    plot(args.out / "quality.png", {r: curves(run) for r, run in runs.items()}, summary)
    (args.out / "quality.json").write_text(
        json.dumps({"summary": summary, "clean_si_sdr": fidelity, "runs": info}, indent=1)
    )
    print(text)
    print(f"written {args.out / 'quality.md'} and quality.png in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
