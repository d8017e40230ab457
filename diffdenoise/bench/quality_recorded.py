"""The quality report's recorded-speech parts: the dev and test languages of a recorded
corpus (:func:`~diffdenoise.bench.quality_data.recorded_parts`), their tables, and the
targets judged on the test languages only (dev is where settings are chosen)."""

from __future__ import annotations

import sys
from pathlib import Path

from diffdenoise.evaluation import evaluate, tune
from diffdenoise.training.checkpoint import CheckpointError

CLEAN_TARGET_DB = 35.0
ALL_SNR_MARGIN = {"si_sdr": 1.0, "pesq": 0.1}
SHARE_TARGET = 0.5


def recorded_tables(rows: list[dict]) -> dict:
    """Per input SNR and per noise over the noisy rows; the clean rows apart."""
    noisy = [r for r in rows if r["bucket"] != "clean"]
    clean = [r for r in rows if r["bucket"] == "clean"]
    return {
        "snr": evaluate.summarise(noisy),
        "noise": evaluate.summarise(noisy, key="noise"),
        "clean": evaluate.summarise(clean) if clean else {},
    }


def recorded_section(tables: dict, folder: Path, part: str, files: int) -> list[str]:
    """The report's lines for one part (``dev`` or ``test``) of the recorded corpus."""
    use = {"test": "reported, never trained or tuned on", "dev": "where settings are chosen"}
    lines = [
        f"## Recorded speech, {part} languages ({folder})",
        "",
        f"{files} utterances people recorded, in languages no training saw ({use[part]}), "
        "mixed with the held-out noise parts above and the recordings in its noise/ folder.",
        "",
        evaluate.markdown(tables["snr"]),
        "",
        evaluate.markdown(tables["noise"]).replace("| input SNR |", "| noise |", 1),
        "",
    ]
    if tables["clean"]:
        clean = evaluate.markdown(tables["clean"]).replace("| input SNR |", "| input |", 1)
        lines += [clean, ""]
    return lines


def tune_on_dev(checkpoint: Path, items: list) -> tuple[tuple[float, float], list[str]]:
    """The correction shares ``python -m diffdenoise.tune`` would choose, scored on the
    recorded dev items (never test), and the report's lines for them."""
    rows = evaluate.run(items, tune.systems_of(str(checkpoint)))
    summary = evaluate.summarise([r for r in rows if r["bucket"] != "clean"])
    chosen = tune.choose(summary)
    lines = [
        "## The correction share, chosen on the recorded dev languages",
        "",
        f"As `python -m diffdenoise.tune` chooses it, on the dev part's "
        f"{summary['all']['noisy']['n']} noisy items (mean over all SNRs); every table of "
        "this report uses the choice.",
        "",
        tune.table(summary, chosen),
        "",
    ]
    return chosen, lines


def share_pairs(text: str) -> list[tuple[float, float]]:
    """``"0.5/0.75,1/1"`` -> ``[(0.5, 0.75), (1.0, 1.0)]`` (correction / suppress share);
    argparse reports a ValueError as an invalid value of the flag."""
    pairs = [tuple(float(x) for x in part.split("/")) for part in text.split(",") if part]
    if not pairs or any(len(p) != 2 or not all(0 <= v <= 1 for v in p) for p in pairs):
        raise ValueError(text)
    return pairs


def dev_shares_section(runs: dict[str, Path], items: list, shares) -> list[str]:
    """Every run scored on the recorded dev items at each pair of ``shares``, side by side:
    an A/B's table, where a setting is chosen (no test item is scored). Markdown lines."""
    systems = {}
    for name, run in runs.items():
        systems |= tune.systems_of(str(run / "best.pt"), shares, prefix=f"{name} ")
    rows = evaluate.run(items, systems)
    noisy = evaluate.summarise([r for r in rows if r["bucket"] != "clean"])["all"]
    clean = evaluate.summarise([r for r in rows if r["bucket"] == "clean"]).get("clean", {})
    names = [f"{a:g}/{b:g}" for a, b in shares]
    lines = [
        f"## Dev languages: each run at each share ({noisy['noisy']['n']} noisy items)",
        "",
        "| run | " + " | ".join(f"{n} SI-SDR / PESQ / STOI" for n in names)
        + " | " + " | ".join(f"clean in, {n}" for n in names) + " |",
        "|---|" + "---|" * len(names) + "---:|" * len(names),
    ]  # fmt: skip
    for run in runs:
        cells = [
            " / ".join(evaluate.fmt_value(noisy[f"{run} {n}"][k], d)
                       for k, d in (("si_sdr", 2), ("pesq", 3), ("stoi", 3)))
            for n in names
        ]  # fmt: skip
        cells += [evaluate.fmt_value(clean.get(f"{run} {n}", {}).get("si_sdr"), 2) for n in names]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_dev_shares(out: Path, runs: dict[str, Path], items: list, shares) -> int:
    """``quality --dev-shares``: :func:`dev_shares_section` into ``out/dev-shares.md`` and
    onto the screen; an exit status (2 for a checkpoint without shares, one line)."""
    try:
        text = "\n".join(dev_shares_section(runs, items, shares))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (out / "dev-shares.md").write_text(text)
    print(text)
    print(f"written {out / 'dev-shares.md'}")
    return 0


def recorded_verdicts(tables: dict, main: str, share, realtime: str = "realtime"):
    """``(target, measured, passed)`` of issue 34's targets on the recorded test part."""
    by_snr = tables["snr"]
    buckets = [b for b in by_snr if b != "all"]

    def margins(metric, other, system=main):
        return {b: by_snr[b][system][metric] - by_snr[b][other][metric] for b in buckets}

    def listing(values, digits=2):
        return ", ".join(f"{b}: {m:+.{digits}f}" for b, m in values.items())

    rows = []
    for metric, digits in (("si_sdr", 2), ("pesq", 3)):
        m = margins(metric, "wiener")
        rows.append((f"recorded test: {metric} at or above Wiener at every SNR",
                     listing(m, digits), all(v >= 0 for v in m.values())))  # fmt: skip
    overall = {k: by_snr["all"][main][k] - by_snr["all"]["wiener"][k] for k in ALL_SNR_MARGIN}
    rows.append(("recorded test, all SNRs: >= Wiener +1 dB SI-SDR and +0.1 PESQ",
                 f"{overall['si_sdr']:+.2f} dB, {overall['pesq']:+.3f}",
                 all(overall[k] >= v for k, v in ALL_SNR_MARGIN.items())))  # fmt: skip
    clean = tables["clean"].get("clean", {}).get(main, {}).get("si_sdr")
    rows.append((f"recorded test, clean speech in: >= {CLEAN_TARGET_DB:g} dB SI-SDR out",
                 "n/a" if clean is None else f"{clean:.2f} dB",
                 clean is not None and clean >= CLEAN_TARGET_DB))  # fmt: skip
    stoi = margins("stoi", "noisy")
    rows.append(("recorded test: STOI at or above the noisy input at every SNR",
                 listing(stoi, 3), all(v >= 0 for v in stoi.values())))  # fmt: skip
    if realtime in by_snr["all"]:
        gap = by_snr["all"][realtime]["si_sdr"] - by_snr["all"]["wiener"]["si_sdr"]
        rows.append((f"recorded test: {realtime} at or above Wiener SI-SDR over all SNRs",
                     f"{gap:+.2f} dB", gap >= 0))  # fmt: skip
    if isinstance(share, tuple):  # chosen by tune on the dev languages
        chose = f"tune chose {share[0]:g}/{share[1]:g} on dev"
        rows.append((f"{main} applies >= {SHARE_TARGET:g} of its learned correction, or tune "
                     "chooses the share", chose, True))  # fmt: skip
    else:
        rows.append((f"{main} applies >= {SHARE_TARGET:g} of its learned correction",
                     f"correction_scale {share:g}", share >= SHARE_TARGET))  # fmt: skip
    return rows
