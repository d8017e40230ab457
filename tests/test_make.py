"""The make targets a user types: what they would run (``make -n``), without running it."""

import subprocess


def dry_run(*args) -> str:
    proc = subprocess.run(["make", "-n", *args], capture_output=True, text=True, check=True)
    return proc.stdout


def test_demo_trains_for_a_step_budget_not_a_wall_clock_minute():
    train = [ln for ln in dry_run("demo").splitlines() if "launch/train.py" in ln]
    assert train and "train.max_steps=1000" in train[0] and "max_minutes" not in train[0]
    assert "train.max_steps=50" in dry_run("demo", "DEMO_STEPS=50")


def test_eval_writes_its_json_beside_the_checkpoint_not_into_a_fixed_folder():
    line = next(
        ln for ln in dry_run("eval", "CKPT=runs/tiny/best.pt").splitlines() if "evaluate" in ln
    )
    assert "-c runs/tiny/best.pt" in line and "--json" not in line


def test_quality_takes_any_speech_and_noise_folders():
    out = dry_run("quality", "CLEAN_DIR=my/speech", "NOISE_DIR=my/noise", "QUALITY_MINUTES=3")
    line = out.replace("\\\n", " ")
    assert "--clean-dir my/speech --noise-dir my/noise" in line and "--minutes 3" in line
    assert "devcorpus" not in out  # no TTS corpus is built when folders are given


def test_quality_causal_compares_realtime_with_default_into_bench_causal():
    out = dry_run("quality-causal", "CLEAN_DIR=my/speech", "NOISE_DIR=my/noise")
    line = out.replace("\\\n", " ")
    assert "--recipes default,realtime --out bench/causal" in line  # where bench B17 reads
    from diffdenoise.bench.realtime import QUALITY

    assert QUALITY.parent.name == "causal" and QUALITY.parent.parent.name == "bench"
