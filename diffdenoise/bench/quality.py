"""``python -m diffdenoise.quality``: recipes against each other and a Wiener filter, on speech.

    python -m diffdenoise.quality --clean-dir devcorpus/speech --noise-dir devcorpus/noise

Splits the speech folder by file and the noise folder in time (one noise file held out
whole, see :mod:`diffdenoise.quality_data`), trains every recipe (``configs/<name>.yaml``)
on the training parts for the same wall-clock budget, all at once, one process and one
thread each, then scores the held-out speech mixed with held-out noise at -5..20 dB, and
clean. Writes ``quality.md`` (tables, targets with PASS/FAIL), ``quality.json`` and
``quality.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from diffdenoise.bench import quality_steps
from diffdenoise.bench.quality_data import QualityData, prepare, recorded_parts
from diffdenoise.bench.quality_recorded import (
    recorded_section,
    recorded_tables,
    recorded_verdicts,
    share_pairs,
    tune_on_dev,
    write_dev_shares,
)
from diffdenoise.bench.quality_runs import curves, run_info
from diffdenoise.common.cli import entry
from diffdenoise.config import loading as config
from diffdenoise.data import audio, noise
from diffdenoise.evaluation import evaluate
from diffdenoise.evaluation.baseline import wiener
from diffdenoise.inference.denoiser import Denoiser
from diffdenoise.inference.loading import set_shares
from diffdenoise.models.factory import model_for
from diffdenoise.models.objectives import objective_of

SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
QUALITY_SEED = 20261127
RTF_TARGET = 0.05
CORPUS_WEIGHT = 3.0  # recorded noise drawn 3x as often as each recipe's synthetic colours


def recipe_files(recipe: str) -> tuple[str, list[str], list[str]]:
    """``default`` -> ``configs/default.yaml``; ``NAME=A.yaml+B.yaml+key=value`` layers its
    own files and overrides. Returns ``(name, files, overrides)``."""
    name, _, spec = recipe.partition("=")
    if not spec:
        return name, [str(config.find_config(name))], []
    parts = spec.split("+")
    return name, [p for p in parts if "=" not in p], [p for p in parts if "=" in p]


def train(
    recipes: list[str], minutes: float, qd: QualityData, runs: Path, parallel: int
) -> dict[str, Path]:
    """Train the recipes ``parallel`` at a time, one process and one thread each (so each
    has a core to itself); returns their run folders."""
    folders = {}
    for first in range(0, len(recipes), parallel):
        folders |= train_wave(recipes[first : first + parallel], minutes, qd, runs)
    return folders


def train_wave(recipes: list[str], minutes: float, qd: QualityData, runs: Path) -> dict:
    procs, folders = {}, {}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for recipe in recipes:
        recipe, run, args = train_args(recipe, minutes, qd, runs)
        subprocess.run(["rm", "-rf", str(run)], check=True)
        log = open(runs / f"quality-{recipe}.log", "w")
        print(f"training {recipe} for {minutes:g} minutes (1 thread) -> {run}", flush=True)
        procs[recipe] = subprocess.Popen(
            [sys.executable, "-m", "diffdenoise.train", *args], env=env, stdout=log, stderr=log
        )
        folders[recipe] = run
    for recipe, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"error: training {recipe} failed; see {runs}/quality-{recipe}.log")
    return folders


def train_args(recipe: str, minutes: float, qd: QualityData, runs: Path):
    """``(name, run folder, python -m diffdenoise.train arguments)`` of one recipe: its
    files, the loop's data and budget, then the recipe's own keys, which win (so a recipe
    can A/B the loop's data too)."""
    recipe, files, overrides = recipe_files(recipe)
    files = [str(Path(f).resolve()) for f in files]
    cfg = config.load(files, overrides)  # each recipe keeps its crop length in seconds
    segment = round(cfg.data.segment / cfg.data.sample_rate * qd.rate)
    run = runs / f"quality-{recipe}"
    return recipe, run, [
        *files,
        f"data.sample_rate={qd.rate}", f"data.segment={segment}",
        f"data.train_shards={qd.speech_shards}/train-*.tar",
        f"data.val_shards={qd.speech_shards}/val-*.tar",
        f"data.noise_shards={qd.noise_shards}/train-*.tar",
        f"noise.weights.corpus={CORPUS_WEIGHT}", "data.num_workers=1",
        "train.max_epochs=0", "train.max_steps=0", f"train.max_minutes={minutes}",
        "train.val_every=250", "checkpoint.every=100000", "train.mixed_precision=no",
        "log.wandb_mode=disabled", "log.every=25",
        f"train.runs_dir={runs}", f"train.run_name={run.name}",
        *overrides,
    ]  # fmt: skip


def test_items(qd: QualityData) -> list[evaluate.Item]:
    """Held-out speech x SNRs, noise types dealt round-robin; plus each file clean."""
    return mixed_items(qd.test_speech, qd.test_noise, qd.rate, clean_rows=True)


def mixed_items(speech: list[Path], noises: dict, rate: int, clean_rows: bool = False):
    """Each speech file x :data:`SNRS`, the ``noises`` (name -> ``(time,)`` at ``rate``)
    dealt round-robin, seeded by the file; with ``clean_rows``, each file clean too."""
    names, items = sorted(noises), []
    for i, path in enumerate(speech):
        data, file_rate = audio.read(path)
        clean = audio.resample(audio.to_mono(data), file_rate, rate)
        key = path.name
        for j, snr in enumerate(SNRS):
            name = names[(i + j) % len(names)]
            rng = np.random.default_rng([QUALITY_SEED, zlib.crc32(key.encode()), j])
            sound = noises[name]
            sound = np.tile(sound, len(clean) // max(len(sound), 1) + 2)
            start = int(rng.integers(0, len(sound) - len(clean)))
            noisy = noise.mix_at_snr(clean, sound[start : start + len(clean)], snr)
            bucket = evaluate.bucket_of(snr)
            items.append(evaluate.Item(f"{key}@{snr:g}dB", clean, noisy, rate, snr, bucket, name))
        if clean_rows:
            items.append(evaluate.Item(f"{key}@clean", clean, clean.copy(), rate, np.inf, "clean"))
    return items


def rtf_at_48k(recipe: str, seconds: float = 10.0, steps: int = 1) -> float:
    """Inference real-time factor of a recipe at 48 kHz on this CPU."""
    _, files, overrides = recipe_files(recipe)
    cfg = config.load(files, [*overrides, "data.sample_rate=48000"])
    model = model_for(cfg)
    denoiser = Denoiser(
        model, 48000, segment=cfg.data.segment / 48000,
        objective=objective_of(cfg.diffusion), steps=steps,
    )  # fmt: skip
    x = np.random.default_rng(0).standard_normal(int(48000 * seconds)).astype(np.float32)
    denoiser(x[:48000], 48000)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        denoiser(x, 48000)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / seconds


def verdicts(by_snr: dict, clean: dict, rtf: float, main: str = "default", base: str = "seed"):
    """``(target, measured, passed)`` for each of the quality targets."""
    buckets = [b for b in by_snr if b != "all"]

    def per_bucket(metric, other):
        return {b: by_snr[b][main][metric] - by_snr[b][other][metric] for b in buckets}

    def listing(margins, digits=2):
        return ", ".join(f"{b}: {m:+.{digits}f}" for b, m in margins.items())

    vs_input = per_bucket("si_sdr", "noisy")
    pesq_vs_input = per_bucket("pesq", "noisy")
    vs_wiener = per_bucket("si_sdr", "wiener")
    pesq_wiener = by_snr["all"][main]["pesq"] - by_snr["all"]["wiener"]["pesq"]
    rows = [
        ("clean speech in comes out >= 25 dB SI-SDR", f"{clean[main]['si_sdr']:.2f} dB",
         clean[main]["si_sdr"] >= 25),
        ("output SI-SDR >= input at every SNR", listing(vs_input),
         all(m >= 0 for m in vs_input.values())),
        ("output PESQ >= input at every SNR", listing(pesq_vs_input, 3),
         all(m >= 0 for m in pesq_vs_input.values())),
        ("beats Wiener on SI-SDR at every SNR", listing(vs_wiener),
         all(m > 0 for m in vs_wiener.values())),
        ("beats Wiener on PESQ on average", f"{pesq_wiener:+.3f}", pesq_wiener > 0),
    ]  # fmt: skip
    if base in by_snr["all"]:
        gain = by_snr["all"][main]["si_sdr_delta"] - by_snr["all"][base]["si_sdr_delta"]
        rows.append((f"beats {base} by >= 3 dB SI-SDR improvement", f"{gain:+.2f} dB", gain >= 3))
    rows.append((f"inference RTF at 48 kHz <= {RTF_TARGET}", f"{rtf:.4f}", rtf <= RTF_TARGET))
    return rows


def summaries(rows: list[dict]) -> tuple[dict, dict]:
    """The report's tables (systems ``NAME@N`` left out), and the all-SNR means of every
    system (the steps table reads those)."""
    noisy_rows = [r for r in rows if r["bucket"] != "clean"]
    every = evaluate.summarise(noisy_rows)["all"]

    def main_only(summary: dict) -> dict:
        return {g: {k: v for k, v in s.items() if "@" not in k} for g, s in summary.items()}

    tables = {
        "snr": main_only(evaluate.summarise(noisy_rows)),
        "noise": main_only(evaluate.summarise(noisy_rows, key="noise")),
        "clean": main_only(evaluate.summarise([r for r in rows if r["bucket"] == "clean"])),
    }
    return tables, every


def report(
    tables: dict, checks, minutes: float, runs_info: dict, qd: QualityData, steps_text=()
) -> str:
    return (
        "\n".join(
            [
                "# Quality on speech at equal CPU budget",
                "",
                f"Each recipe trained for {minutes:g} wall-clock minutes, one process and one "
                f"thread each, at {qd.rate} Hz. Scored on {len(qd.test_speech)} held-out speech "
                f"files mixed with held-out noise ({', '.join(sorted(qd.test_noise))}; "
                f"the '{qd.holdout}' noise file never reaches training).",
                "",
                "| recipe | steps | parameters | grad norm (median / max) | skipped steps |",
                "|---|---:|---:|---:|---:|",
                *[
                    f"| {k} | {v['steps']} | {v['params']} | {v['grad_norm_median']} / "
                    f"{v['grad_norm_max']} | {v['skipped_steps']} |"
                    for k, v in runs_info.items()
                ],
                "",
                "## Per input SNR",
                "",
                evaluate.markdown(tables["snr"]),
                "",
                "## Per noise type (all SNRs)",
                "",
                evaluate.markdown(tables["noise"]).replace("| input SNR |", "| noise |", 1),
                "",
                "## Clean speech in",
                "",
                evaluate.markdown(tables["clean"]).replace("| input SNR |", "| input |", 1),
                "",
                *steps_text,
                "## Targets",
                "",
                "| target | measured | result |",
                "|---|---|---|",
                *[f"| {t} | {m} | {'PASS' if ok else 'FAIL'} |" for t, m, ok in checks],
            ]
        )
        + "\n"
    )


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m diffdenoise.quality", description=__doc__)
    p.add_argument("--clean-dir", type=Path, required=True, help="folder of clean speech")
    p.add_argument("--noise-dir", type=Path, required=True, help="folder of noise recordings")
    p.add_argument("--holdout-noise", default="", help="noise file (stem) kept out of training")
    p.add_argument(
        "--recipes",
        default="seed,default,bridge,realtime",
        help="comma-separated: NAME for configs/NAME.yaml, or NAME=A.yaml+B.yaml+key=value to "
        "layer files and overrides",
    )
    p.add_argument(
        "--parallel", type=int, default=os.cpu_count() or 1,
        help="recipes trained at once, one core each (default: the cores here)",
    )  # fmt: skip
    p.add_argument("--minutes", type=float, default=25.0, help="training budget per recipe")
    p.add_argument("--rate", type=int, default=16000, help="sample rate of the comparison")
    p.add_argument("--work", type=Path, default=Path("runs") / "quality-data")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--skip-training", action="store_true", help="score the existing runs")
    p.add_argument(
        "--recorded", type=Path,
        help="also score recorded speech: a make reccorpus folder (speech/, noise/)",
    )  # fmt: skip
    p.add_argument("--train-speech", action="store_true",
                   help="with --recorded: train on its train-speech/ too (KLettres; not kept, "
                   "docs/experiments.md 2026-12-06)")  # fmt: skip
    p.add_argument("--train-noise", action="store_true",
                   help="with --recorded: train on its train-noise/ too (Colobot's music and "
                   "effects; not kept, docs/experiments.md 2026-12-07)")  # fmt: skip
    p.add_argument("--no-tune", action="store_true",
                   help="keep the main recipe's own correction share (default with --recorded: "
                   "the share tune chooses on the recorded dev languages)")  # fmt: skip
    p.add_argument("--dev-shares", type=share_pairs, metavar="A/B,...",
                   help="with --recorded: score each run on the dev languages only at these "
                   "correction/suppress shares (an A/B), write dev-shares.md and stop")  # fmt: skip
    args = p.parse_args(argv)
    if args.dev_shares and not args.recorded:
        p.error("--dev-shares needs --recorded (the dev languages are a recorded corpus's)")
    return args


def steps_sections(bridges: list[str], specs: dict, all_systems: dict, out: Path):
    """For each bridge recipe: its steps table (markdown lines), PESQ check and figure."""
    lines, checks = [], []
    for r in bridges:
        rtfs = {n: rtf_at_48k(specs[r], steps=n) for n in quality_steps.STEPS}
        table, check = quality_steps.steps_table(all_systems, r, rtfs)
        checks.append(check)
        lines += [f"## {r}: quality against sampler steps (all SNRs)", "", table, ""]
        quality_steps.steps_figure(out / f"quality-{r}-steps.png", all_systems, r, rtfs)
    return lines, checks


def tuned_share(args, recorded, qd: QualityData, run: Path, denoiser):
    """With a recorded corpus and a spectral main recipe (unless ``--no-tune``): the
    shares tune chooses on the dev languages, set on ``denoiser`` for every table after;
    else the model's own share. Returns ``(share, report lines)``."""
    model = denoiser.model
    if recorded is None or args.no_tune or not hasattr(model, "correction_scale"):
        return getattr(model, "correction_scale", 1.0), []
    noises = qd.test_noise | recorded.noises
    items = mixed_items(recorded.dev, noises, qd.rate, clean_rows=True)
    chosen, lines = tune_on_dev(run / "best.pt", items)
    set_shares(model, run / "best.pt", {"correction_scale": chosen[0], "suppress_scale": chosen[1]})
    return chosen, lines


@entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    specs = {recipe_files(r)[0]: r for r in args.recipes.split(",") if r}
    recorded = (
        recorded_parts(args.recorded, args.rate, args.train_speech) if args.recorded else None
    )
    qd = prepare(args.clean_dir, args.noise_dir, args.work, args.rate, args.holdout_noise,
                 recorded.train if recorded else [],
                 recorded.train_noise if recorded and args.train_noise else [])  # fmt: skip
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.skip_training:
        runs = {r: args.runs / f"quality-{r}" for r in specs}
    else:
        runs = train(list(specs.values()), args.minutes, qd, args.runs, max(1, args.parallel))
    torch.set_num_threads(2)
    if args.dev_shares:
        items = mixed_items(recorded.dev, qd.test_noise | recorded.noises, qd.rate, True)
        return write_dev_shares(args.out, runs, items, args.dev_shares)
    models = {r: Denoiser.from_checkpoint(run / "best.pt", device="cpu") for r, run in runs.items()}
    main_recipe = "default" if "default" in specs else list(specs)[-1]
    share, tune_text = tuned_share(args, recorded, qd, runs[main_recipe], models[main_recipe])
    bridges = [r for r in specs if models[r].objective.conditioned]
    stepped = {k: v for r in bridges for k, v in quality_steps.step_systems(r, models[r]).items()}
    rows = evaluate.run(test_items(qd), {**models, "wiener": wiener, **stepped})
    tables, all_systems = summaries(rows)
    rtf = rtf_at_48k(specs[main_recipe])
    checks = verdicts(tables["snr"], tables["clean"]["clean"], rtf, main_recipe)
    steps_text, step_checks = steps_sections(bridges, specs, all_systems, args.out)
    if recorded is not None:
        rec_text = []
        for part in ("test", "dev"):
            speech = getattr(recorded, part)
            items = mixed_items(speech, qd.test_noise | recorded.noises, qd.rate, clean_rows=True)
            rec_rows = evaluate.run(items, {**models, "wiener": wiener})
            tables[f"recorded_{part}"] = recorded_tables(rec_rows)
            rec_text += recorded_section(tables[f"recorded_{part}"], args.recorded, part,
                                         len(speech))  # fmt: skip
        checks += recorded_verdicts(tables["recorded_test"], main_recipe, share)
        steps_text = [*rec_text, *tune_text, *steps_text]
    checks += step_checks
    info = {r: run_info(run, models[r].model) for r, run in runs.items()}
    text = report(tables, checks, args.minutes, info, qd, steps_text)
    (args.out / "quality.md").write_text(text)
    from diffdenoise.common.plots import quality_figure

    histories = {r: curves(run) for r, run in runs.items()}
    quality_figure(args.out / "quality.png", histories, tables, qd.holdout)
    checked = [{"target": t, "measured": m, "pass": ok} for t, m, ok in checks]
    result = {"tables": tables, "runs": info, "rtf_48k": rtf, "holdout": qd.holdout}
    result |= {"checks": checked, "steps": {k: v for k, v in all_systems.items() if "@" in k}}
    (args.out / "quality.json").write_text(json.dumps(result, indent=1))
    print(text)
    took = time.time() - started
    print(f"written {args.out / 'quality.md'}, quality.json, quality.png in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
