"""End-to-end training runs on CPU: real shards, real Accelerate, real W&B offline files."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffdenoise.training import loop as train_mod
from diffdenoise.training.checkpoint import load_best
from tests.distributed import ROOT, accelerate_launch, cpu_env, python_run
from tests.helpers import make_shards, wandb_history_keys, write_speech

pytestmark = pytest.mark.slow
TRAIN = "launch/train.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return make_shards(tmp, n=8, extra=["--val-fraction", "0.25", "--max-seconds", "1"])


def args_for(shards, runs, *extra):
    return [
        "configs/tiny.yaml",
        f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/val-*.tar",
        f"train.runs_dir={runs}",
        "data.segment=4000",
        "train.batch_size=4",
        "data.num_workers=1",
        *extra,
    ]


def run_dir_of(runs: Path) -> Path:
    (only,) = [p for p in runs.iterdir() if p.is_dir()]
    return only


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/total"] for r in rows if "train/total" in r}


def test_train_writes_best_then_resumes(shards, tmp_path):
    runs = tmp_path / "runs"
    common = [
        "train.max_steps=12",
        "train.val_every=6",
        "checkpoint.every=6",
        "log.every=2",
        "train.run_name=r1",
    ]
    proc = python_run([TRAIN, *args_for(shards, runs, *common)])
    run_dir = run_dir_of(runs)
    assert "1 process(es) on cpu" in proc.stdout and "finished at step 12" in proc.stdout
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    for key in (
        "model",
        "ema_model",
        "ema",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "val_loss",
        "config",
        "version",
    ):
        assert key in best, key
    assert best["config"]["model"]["channels"] == 16 and isinstance(best["config"], dict)
    assert list(run_dir.glob("best_model_*.pth"))
    assert (run_dir / "config.yaml").exists()
    assert sorted(p.name for p in (run_dir / "state").iterdir()) == [
        "step-000000006",
        "step-000000012",
    ]
    # W&B: a real offline run directory holding the logged keys
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    keys = wandb_history_keys(wandb_file)
    for key in (
        "train/total",
        "train/stft_phase",
        "train/l1",
        "train/lr",
        "train/grad_norm",
        "train/skipped_steps",
        "train/samples_per_s",
        "train/audio_s_per_s",
        "val/total",
        "val/stft_sc",
        "val/l1",
    ):
        assert key in keys, key
    assert any(k.startswith("media/0/spectrogram") for k in keys)
    wandb_id = (run_dir / "wandb_id").read_text()
    # a second run without resume refuses to overwrite
    again = python_run([TRAIN, *args_for(shards, runs, *common)], check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    with open(run_dir / "metrics.jsonl", "a") as log:  # a line cut short by a kill
        log.write('{"step": 12, "train/to')
    # resume=auto continues from the latest state into the same W&B run
    more = python_run(
        [TRAIN, *args_for(shards, runs, *common[1:], "train.max_steps=16", "train.resume=auto")],
        check=False,
    )
    assert more.returncode == 0, more.stderr
    assert "resumed from" in more.stdout and "at step 12" in more.stdout
    assert "finished at step 16" in more.stdout
    assert f"warning: {run_dir / 'metrics.jsonl'}: dropped 1 unreadable line(s)" in more.stdout
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert (run_dir / "wandb_id").read_text() == wandb_id
    assert len(list(run_dir.glob("wandb/offline-run-*"))) >= 1


FAMILY_ARGS = {
    "unet": ["model.dropout=0.1"],
    # the default family: its GRU weights share one cuDNN buffer on a GPU
    "spectral": ["model.family=spectral", "model.spectral.hidden=32", "model.spectral.layers=2"],
    # a bridge: t, x_t and its noise drawn from the plans; spectral norm's power iteration
    "bridge": ["diffusion.objective=bridge", "model.spectral_norm=true"],
    # talkers drawn from the training speech, loudness envelopes and rooms
    "babble": [
        "noise.weights.babble=1.0",
        "noise.modulation_prob=0.5",
        "noise.babble_bank_s=2",
        "noise.reverb_prob=0.5",
    ],
}


@pytest.mark.parametrize("family", FAMILY_ARGS)
def test_exact_resume_single_process(shards, tmp_path, family):
    common = [
        "train.max_steps=8",
        "checkpoint.every=4",
        "checkpoint.keep_last=3",
        "train.val_every=4",
        "log.every=1",
        *FAMILY_ARGS[family],
    ]
    python_run([TRAIN, *args_for(shards, tmp_path / "a", *common)])
    straight = run_dir_of(tmp_path / "a")
    half = straight / "state" / "step-000000004"
    python_run([TRAIN, *args_for(shards, tmp_path / "b", *common, f"train.resume={half}")])
    resumed = run_dir_of(tmp_path / "b")
    assert_same_training(straight, resumed)


def assert_same_training(straight: Path, resumed: Path, step: int = 8, compare_from: int = 5):
    a = torch.load(straight / f"state/step-{step:09d}/pytorch_model.bin", weights_only=True)
    b = torch.load(resumed / f"state/step-{step:09d}/pytorch_model.bin", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    la, lb = losses(straight), losses(resumed)
    for logged in range(compare_from, step + 1):
        assert lb[logged] == pytest.approx(la[logged], rel=1e-5)


@pytest.mark.parametrize("objective", ["predictive", "bridge"])
def test_exact_resume_two_processes(shards, tmp_path, objective):
    common = [
        "train.max_steps=8",
        "checkpoint.every=4",
        "checkpoint.keep_last=3",
        "train.val_every=4",
        "log.every=1",
        "train.batch_size=2",
        f"diffusion.objective={objective}",
        "noise.reverb_prob=0.5",  # rooms are part of the device-side mixing they resume
    ]
    first = accelerate_launch([TRAIN, *args_for(shards, tmp_path / "a", *common)])
    assert "2 process(es) on cpu" in first.stdout
    assert "parameters identical across 2 rank(s)" in first.stdout
    straight = run_dir_of(tmp_path / "a")
    half = straight / "state" / "step-000000004"
    accelerate_launch([TRAIN, *args_for(shards, tmp_path / "b", *common, f"train.resume={half}")])
    assert_same_training(straight, run_dir_of(tmp_path / "b"))


def test_preemption_saves_and_resumes(shards, tmp_path):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        "29633",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        TRAIN,
        *args_for(
            shards,
            runs,
            "train.max_steps=100000",
            "train.max_epochs=0",
            "train.val_every=100000",
            "checkpoint.every=100000",
            "log.every=1",
            "train.run_name=pre",
        ),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        runs_dirs = list(runs.glob("*/metrics.jsonl")) if runs.exists() else []
        if runs_dirs and len(runs_dirs[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    for pid in children(proc.pid):  # the workers, as SLURM signals a job step's tasks
        os.kill(pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    run_dir = run_dir_of(runs)
    marker = run_dir / "PREEMPTED"
    assert marker.exists(), out
    saved = json.loads(marker.read_text())["step"]
    assert saved >= 3 and (run_dir / "state" / f"step-{saved:09d}").is_dir()
    assert "preempted at step" in out
    resumed = accelerate_launch(
        [
            TRAIN,
            *args_for(
                shards,
                runs,
                f"train.max_steps={saved + 2}",
                "train.max_epochs=0",
                "train.resume=auto",
                "train.run_name=pre",
            ),
        ]
    )
    assert (
        f"at step {saved}" in resumed.stdout and f"finished at step {saved + 2}" in resumed.stdout
    )
    assert (run_dir / "best.pt").exists() and not marker.exists()


def children(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def test_two_nodes_on_localhost(shards, tmp_path):
    port = 29000 + (int(time.time()) % 500)
    base = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "2",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    args = [TRAIN, *args_for(shards, tmp_path / "runs", "train.max_steps=4", "train.val_every=4")]
    nodes = [
        subprocess.Popen(
            [*base, "--machine_rank", str(r), *args],
            cwd=ROOT,
            env=cpu_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [n.communicate(timeout=240)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert "2 process(es) on cpu" in outs[0]
    assert "parameters identical across 2 rank(s)" in outs[0]


def poison_noisy_twins(shards):
    """Overwrite every stored noisy twin with NaN samples of the same length (and size)."""
    import io
    import tarfile

    import numpy as np
    import soundfile as sf

    for tar_path in shards.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(tar_path, "w") as tar:
            for member, data in members:
                if member.name.endswith(".noisy.wav"):
                    x, sr = sf.read(io.BytesIO(data), dtype="float32")
                    buf = io.BytesIO()
                    sf.write(buf, np.full_like(x, np.nan), sr, format="WAV", subtype="FLOAT")
                    data = buf.getvalue()
                    assert len(data) == member.size
                tar.addfile(member, io.BytesIO(data))


def test_non_finite_steps_stop_with_clear_error(tmp_path):
    import soundfile as sf

    from diffdenoise.data import sharding as shard
    from tests.helpers import make_corpus

    clean = make_corpus(tmp_path / "gt", n=4)
    for path in clean.rglob("*.wav"):
        x, sr = sf.read(str(path), dtype="float32")
        out = tmp_path / "gl" / path.relative_to(clean)
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), x, sr, subtype="FLOAT")
    shard.main(
        [
            str(clean),
            "--noisy-dir",
            str(tmp_path / "gl"),
            "--name",
            "nan",
            "--format",
            "wav",
            "--out",
            str(tmp_path / "s"),
            "--val-fraction",
            "0.3",
        ]
    )
    shards = tmp_path / "s" / "nan"
    poison_noisy_twins(shards)  # the shard tool refuses NaN audio, so damage the tars after
    proc = python_run(
        [TRAIN, *args_for(shards, tmp_path / "runs", "train.max_bad_steps=3")], check=False
    )
    assert proc.returncode == 2
    assert "step 1: non-finite loss or gradient, step skipped" in proc.stdout
    assert "3 non-finite steps in a row" in proc.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.chanels=3"], "unknown key 'model.chanels'"),
        (["train.batch_size=-4"], "'train.batch_size' is -4; it must be >= 1"),
        (["data.train_shards=/nonexistent/x-*.tar"], "no shard matches"),
        (["train.runs_dir=/etc/hostname/runs"], "cannot create the run directory"),
        (["train.resume=/nonexistent/state"], "no saved training state"),
    ],
)
def test_bad_input_fails_before_training(shards, tmp_path, capsys, extra, message):
    code = train_mod.main(args_for(shards, tmp_path / "runs", *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not list((tmp_path / "runs").glob("*/state"))


def test_missing_config_file(capsys):
    assert train_mod.main(["configs/nope.yaml"]) == 2
    assert "configs/nope.yaml: config file not found" in capsys.readouterr().err


def test_incompatible_checkpoint_is_a_clear_error(shards, tmp_path):
    python_run(
        [
            TRAIN,
            *args_for(
                shards,
                tmp_path / "a",
                "train.max_steps=2",
                "checkpoint.every=2",
                "train.val_every=2",
            ),
        ]
    )
    state = run_dir_of(tmp_path / "a") / "state" / "step-000000002"
    proc = python_run(
        [TRAIN, *args_for(shards, tmp_path / "b", "model.channels=8", f"train.resume={state}")],
        check=False,
    )
    assert proc.returncode == 2
    assert "saved state does not fit this model/config" in proc.stderr


def test_best_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "diffdenoise.best/1", "x": Evil()}, path)
    from diffdenoise.training.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_best(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a diffdenoise checkpoint"):
        load_best(path)


def test_time_budget_accumulation_precision_fallback_and_val_metric(shards, tmp_path):
    extra = [
        "train.max_steps=0",
        "train.max_epochs=0",
        "train.max_minutes=0.25",
        "train.grad_accum=2",
        "train.mixed_precision=bf16",
        "train.val_metrics=[si_sdr,stoi]",
        "train.val_every=1000",
        "log.every=5",
        "log.wandb_mode=disabled",
    ]
    start = time.time()
    proc = python_run([TRAIN, *args_for(shards, tmp_path / "runs", *extra)])
    assert time.time() - start < 60
    assert "train.mixed_precision=bf16 needs a GPU here; training in fp32" in proc.stdout
    # sized from 5 probe steps, again from every step of warm-up, where it ends, and again
    # at the peak of that plan's curve
    plans = re.findall(
        r"step (\d+): time budget planned as (\d+) steps from (\d+) timed", proc.stdout
    )
    (probe, first, five), (warm, second, timed), (peak, total, at_peak) = [
        tuple(map(int, p)) for p in plans
    ]
    assert (probe, five) == (6, 5) and warm == round(0.05 * first) and timed == warm - 1
    warm_up = round(0.05 * second)
    assert peak == warm_up + round(0.3 * (second - warm_up)) - 1 and at_peak == peak - 1
    assert int(re.search(r"finished at step (\d+)", proc.stdout)[1]) <= total  # the last plan
    run_dir = run_dir_of(tmp_path / "runs")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/total" in r]
    assert len(val) == 1  # validated once, at the budget
    assert -50 < val[0]["val/si_sdr"] < 50 and 0 <= val[0]["val/stoi"] <= 1
    assert (run_dir / "best.pt").exists() and not (run_dir / "wandb").exists()
    train_rows = [r for r in rows if "train/samples_per_s" in r]
    from diffdenoise.data import pipeline as data

    per_epoch = data.manifest_stats(data.expand_urls(f"{shards}/train-*.tar"))["samples"] // 4
    # each optimizer step consumed two micro-batches of 4
    last = train_rows[-1]
    assert last["epoch"] == pytest.approx(last["step"] * 2 / per_epoch, rel=1e-6)


def test_torch_compile_trains_and_saves_plain_weights(shards, tmp_path):
    extra = ["train.compile=true", "train.max_steps=3", "train.val_every=3", "checkpoint.every=3"]
    python_run([TRAIN, *args_for(shards, tmp_path / "runs", *extra, "log.wandb_mode=disabled")])
    best = run_dir_of(tmp_path / "runs") / "best.pt"
    weights = load_best(best)["model"]
    assert not any(k.startswith("_orig_mod.") for k in weights)  # loads without compile
    from diffdenoise import Denoiser

    assert Denoiser.from_checkpoint(best, device="cpu")(torch.zeros(100), 16000).shape == (100,)


def test_resume_auto_skips_a_damaged_newest_state(shards, tmp_path):
    steps = [
        "checkpoint.every=2",
        "train.val_every=2",
        "checkpoint.keep_last=3",
        "train.run_name=r",
    ]
    python_run([TRAIN, *args_for(shards, tmp_path, "train.max_steps=6", *steps)])
    run = run_dir_of(tmp_path)
    states = sorted((run / "state").iterdir())
    assert [p.name for p in states] == [f"step-00000000{i}" for i in (2, 4, 6)]
    weights = states[2] / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (states[1] / "progress.pt").write_bytes(b"")
    proc = python_run(
        [TRAIN, *args_for(shards, tmp_path, "train.max_steps=8", "train.resume=auto", *steps)]
    )
    assert f"warning: skipping {states[2]}: saved state is damaged" in proc.stdout
    assert f"warning: skipping {states[1]}: saved state is damaged" in proc.stdout
    assert f"resumed from {states[0]} at step 2" in proc.stdout
    assert (run / "state" / "step-000000008").is_dir()
    for state in (run / "state").iterdir():  # now damage every one
        (state / "pytorch_model.bin").write_bytes(b"")
    proc = python_run(
        [TRAIN, *args_for(shards, tmp_path, "train.max_steps=10", "train.resume=auto", *steps)],
        check=False,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert err[-1].startswith(f"error: {run / 'state'}: no intact training state to resume from")


def spoil_first_sample_name(tar_path: Path) -> None:
    """Put a byte that is not UTF-8 into the names of the tar's first sample, in place (the
    size stays, so training's start-up size check passes), with valid header checksums."""
    import tarfile

    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    key = members[0].name.split(".", 1)[0]
    raw = bytearray(tar_path.read_bytes())
    for member in (m for m in members if m.name.split(".", 1)[0] == key):
        header = member.offset
        raw[header + len(key) - 1] = 0xFF
        raw[header + 148 : header + 156] = b" " * 8
        raw[header + 148 : header + 156] = b"%06o\0 " % sum(raw[header : header + 512])
    tar_path.write_bytes(bytes(raw))


def test_damaged_shards_are_counted_named_and_warned_once(tmp_path):
    import tarfile

    shards = make_shards(tmp_path, n=8, extra=["--val-fraction", "0.25", "--max-seconds", "1"])
    train_tar = sorted(shards.glob("train-*.tar"))[0]
    with tarfile.open(train_tar) as tar:
        flac = next(m for m in tar.getmembers() if m.name.endswith(".flac"))
    raw = bytearray(train_tar.read_bytes())  # same size: passes the start-up size check
    raw[flac.offset_data : flac.offset_data + flac.size] = b"\x00" * flac.size
    train_tar.write_bytes(bytes(raw))
    named_tar = sorted(shards.glob("train-*.tar"))[1]
    spoil_first_sample_name(named_tar)
    val_tar = sorted(shards.glob("val-*.tar"))[0]
    raw = bytearray(val_tar.read_bytes())
    half = len(raw) // 2
    raw[half:] = bytes(range(256)) * ((len(raw) - half) // 256) + b"\x01" * (
        (len(raw) - half) % 256
    )
    val_tar.write_bytes(bytes(raw))
    manifest = json.loads((shards / "manifest.json").read_text())
    listed = manifest["splits"]["val"]["samples"]
    extra = ["train.max_steps=6", "train.val_every=2", "log.every=2", "train.run_name=r"]
    proc = python_run([TRAIN, *args_for(shards, tmp_path / "runs", *extra)])
    err = proc.stderr
    assert err.count(f"{val_tar}:") == 1  # once, though validation read it three times
    assert "validation read " in err and f"of the {listed} samples the manifest lists" in err
    assert f"in {train_tar}: " in err  # the undecodable sample names its tar
    assert f"in {named_tar}: member name " in err and "is not valid UTF-8" in err
    rows = [
        json.loads(x) for x in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(r.get("train/bad_samples", 0) for r in rows) >= 1


def test_a_killed_rank_gives_one_line_with_the_resume_command(shards, tmp_path):
    runs = tmp_path / "runs"
    extra = ["train.max_steps=100000", "train.max_epochs=0", "log.every=1", "train.run_name=k"]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--main_process_port", "29641", "--mixed_precision", "no",
        "--dynamo_backend", "no", TRAIN, *args_for(shards, runs, *extra),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        log = runs / "k" / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    os.kill(sorted(children(proc.pid))[-1], signal.SIGKILL)  # as the out-of-memory killer would
    out, _ = proc.communicate(timeout=120)
    lines = [ln for ln in out.splitlines() if ln.startswith("error: rank ")]
    assert proc.returncode != 0 and len(lines) == 1, out
    named = re.match(
        r"error: rank (\d) of 2 stopped: rank (\d) failed first, killed by a", lines[0]
    )
    assert named and named.group(1) != named.group(2), lines[0]
    assert lines[0].endswith("train.run_name=k train.resume=auto")


def test_ema_update_moves_toward_the_weights_and_skips_a_bad_step():
    from torch_ema import ExponentialMovingAverage

    from diffdenoise.training.step import ema_update

    net = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(net.parameters(), decay=0.9, use_num_updates=False)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema_update(ema, net.parameters(), torch.tensor(True))
    assert all(torch.equal(s, p) for s, p in zip(ema.shadow_params, start))
    ema_update(ema, net.parameters(), torch.tensor(False))
    for shadow, before in zip(ema.shadow_params, start):
        torch.testing.assert_close(shadow, before + 0.1)  # (1 - decay) of the way
    with pytest.raises(ValueError, match="EMA holds 2 tensors but the model has 1"):
        ema_update(ema, [net.weight], torch.tensor(False))


class Payload:
    """A pickled object that creates ``marker`` when it is unpickled: code that runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path, raw: bool = False) -> None:
    """Replace ``path`` with a payload: a torch zip file, or a bare pickle with ``raw``."""
    import pickle

    if raw:
        path.write_bytes(pickle.dumps({"x": Payload(marker)}))
    else:
        torch.save({"x": Payload(marker)}, path)


def test_no_file_of_a_saved_state_can_run_code(shards, tmp_path):
    import shutil

    from accelerate import Accelerator

    from diffdenoise.config import loading as config
    from diffdenoise.training import checkpoint, distrib

    steps = [
        "checkpoint.every=2",
        "train.val_every=2",
        "checkpoint.keep_last=3",
        "train.run_name=r",
    ]
    args = args_for(shards, tmp_path, *steps)
    python_run([TRAIN, *args, "train.max_steps=6"])
    run, marker = tmp_path / "r", tmp_path / "payload-ran"
    states = sorted((run / "state").iterdir())
    names = sorted(p.name for p in states[-1].iterdir())
    accelerate_files = ["pytorch_model.bin", "optimizer.bin", "random_states_0.pkl"]
    assert names == sorted([*accelerate_files, "ema.pt", "schedule.pt", "progress.pt"])
    files, overrides = [a for a in args if "=" not in a], [a for a in args if "=" in a]
    cfg = config.load(files, overrides)
    acc = Accelerator(cpu=True)
    built = train_mod.build_run(cfg, acc, run, per_epoch=4)
    for i, name in enumerate(names):  # each file in turn, in the call resume makes
        probe = tmp_path / f"probe-{name}"
        shutil.copytree(states[-1], probe)
        plant(probe / name, marker, raw=i % 2 == 1)
        with pytest.raises(checkpoint.CheckpointError, match=f"refused: {name} holds pickled"):
            distrib.load_state(acc, probe, run, built.extras)
        assert not marker.exists(), name
    legacy = tmp_path / "legacy"  # a state written before this check: refused, unread
    shutil.copytree(states[-1], legacy)
    plant(legacy / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(checkpoint.CheckpointError, match="written by an older diffdenoise"):
        distrib.load_state(acc, legacy, run, built.extras)
    assert not marker.exists()
    # a real resume: an explicit state with a payload stops with one line ...
    plant(tmp_path / "probe-optimizer.bin" / "progress.pt", marker)
    explicit = f"train.resume={tmp_path / 'probe-optimizer.bin'}"
    proc = python_run([TRAIN, *args, "train.max_steps=8", explicit], check=False)
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "refused" in proc.stderr
    # ... and auto passes it by, and a damaged RNG file, to the newest intact state
    plant(states[2] / "optimizer.bin", marker)
    rng = states[1] / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:100])
    proc = python_run([TRAIN, *args, "train.max_steps=8", "train.resume=auto"])
    assert not marker.exists()
    assert f"skipping {states[2]}: saved state refused: optimizer.bin holds" in proc.stdout
    assert f"skipping {states[1]}: saved state is damaged" in proc.stdout
    assert f"resumed from {states[0]} at step 2" in proc.stdout


def start_training(args: list[str], run_dir: Path) -> subprocess.Popen:
    """A training process in a session of its own (a Ctrl-C reaches its whole group, loader
    workers included), returned once it has logged three steps."""
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *args], cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and len(metrics.read_text().splitlines()) >= 3
    ):
        time.sleep(0.2)
    return proc


def test_ctrl_c_saves_and_resumes_exactly_and_a_second_run_cannot_share_the_folder(
    shards, tmp_path
):
    common = ["train.max_steps=300", "train.val_every=100000", "checkpoint.every=100000",
              "log.every=1", "train.run_name=r"]  # fmt: skip
    python_run([TRAIN, *args_for(shards, tmp_path / "a", *common)])
    runs = tmp_path / "b"
    proc = start_training(args_for(shards, runs, *common), runs / "r")
    os.killpg(proc.pid, signal.SIGSTOP)  # paused, it cannot end while the second one starts
    second = python_run([TRAIN, *args_for(shards, runs, *common)], check=False)
    os.killpg(proc.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: {runs / 'r'} is in use by another training (pid {proc.pid} on "
        f"{os.uname().nodename}); wait for it to end or choose another train.run_name"
    ]
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    line = re.search(r"interrupted at step (\d+): state saved; resume with train.resume=auto", out)
    assert line, out
    stopped = int(line.group(1))
    assert 3 <= stopped < 300 and (runs / "r/state" / f"step-{stopped:09d}").is_dir()
    assert not (runs / "r" / "PREEMPTED").exists()  # not a preemption: no requeue
    python_run([TRAIN, *args_for(shards, runs, *common, "train.resume=auto")])
    assert_same_training(tmp_path / "a" / "r", runs / "r", step=300, compare_from=stopped + 1)


@pytest.mark.parametrize("first_save", ["best.pt", "the state of step 2"])
def test_a_full_disk_while_saving_is_one_line(shards, small_disk, first_save):
    disk = small_disk(1024)  # the run's config and logs fit; a 1.1 MB checkpoint does not
    every = ["train.val_every=2", "checkpoint.every=4"]
    if first_save != "best.pt":
        every = ["train.val_every=4", "checkpoint.every=2"]
    args = [*args_for(shards, disk, "train.max_steps=4", "train.run_name=r", *every)]
    proc = python_run([TRAIN, *args, "log.wandb_mode=disabled"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {disk / 'r'}: no space left on the device while writing {first_save}; what "
        "was saved before is intact: free space and resume with train.resume=auto"
    )
    assert (disk / "r" / "config.yaml").is_file() and not (disk / "r" / "best.pt").exists()
    assert not list((disk / "r").rglob(".*tmp*"))  # no half-written file or state left


def test_flac_and_pcm16_shards_in_one_glob_and_files_shorter_than_the_crop(tmp_path):
    """Two shard folders of each format, matched by one glob; every file (0.6-1.35 s) is
    shorter than the 2 s crop, so every crop is zero-padded."""
    from diffdenoise.data import sharding as shard

    src = tmp_path / "gt"
    for i in range(8):
        write_speech(src / f"u{i}.wav", 0.6 + 0.1 * i, seed=i)
    for fmt in ("flac", "pcm16"):
        out = ["--name", fmt, "--out", str(tmp_path / "s"), "--format", fmt]
        assert shard.main([str(src), *out, "--val-fraction", "0.25"]) == 0
    args = [
        "configs/tiny.yaml",
        f"data.train_shards={tmp_path}/s/*/train-*.tar",
        f"data.val_shards={tmp_path}/s/*/val-*.tar",
        f"train.runs_dir={tmp_path / 'runs'}",
        "data.segment=32000",
        "train.batch_size=4",
        "train.max_steps=6",
        "train.val_every=3",
        "log.every=1",
        "train.run_name=mixed",
        "train.auto_batch=true",  # no GPU here: the configured batch, and a line saying so
    ]
    proc = python_run([TRAIN, *args])
    assert "finished at step 6" in proc.stdout
    assert "train.auto_batch needs a GPU; batch 4 as configured" in proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "runs/mixed/metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train/total"]) for r in rows if "train/total" in r)
    manifests = [
        json.loads((tmp_path / "s" / f / "manifest.json").read_text()) for f in ("flac", "pcm16")
    ]
    # six steps of four read every training sample of both folders, and none was bad
    assert sum(m["splits"]["train"]["samples"] for m in manifests) <= 6 * 4
    assert max(r.get("train/bad_samples", 0) for r in rows) == 0
    assert (tmp_path / "runs/mixed/best.pt").is_file()


def test_a_second_ctrl_c_exits_at_once_without_saving(shards, tmp_path):
    common = ["train.max_steps=100000", "train.max_epochs=0", "train.val_every=100000",
              "checkpoint.every=100000", "log.every=1", "train.run_name=r"]  # fmt: skip
    proc = start_training(args_for(shards, tmp_path, *common), tmp_path / "r")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.02)  # two signals pending at once are one; a save takes far longer
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out + err
    assert "interrupted again: exiting at once, nothing more saved" in err
    assert "state saved" not in out and not list((tmp_path / "r").glob("state/step-*"))


def test_init_from_starts_at_the_checkpoint_with_a_fresh_optimizer(shards, tmp_path):
    """Fine-tuning: a new run takes a finished run's EMA weights and starts its own step
    count, optimizer and schedule; a checkpoint of another model is one line, exit 2."""
    python_run(
        [TRAIN, *args_for(shards, tmp_path / "a", "train.max_steps=40", "train.val_every=40")]
    )
    best_a = load_best(run_dir_of(tmp_path / "a") / "best.pt")
    one_step = ["train.max_steps=1", "train.val_every=1", "optim.lr=1e-9"]
    fresh, tuned = tmp_path / "fresh", tmp_path / "tuned"
    python_run([TRAIN, *args_for(shards, fresh, *one_step)])
    init = f"train.init_from={run_dir_of(tmp_path / 'a') / 'best.pt'}"
    proc = python_run([TRAIN, *args_for(shards, tuned, *one_step, init)])
    assert f"initialised from {init.split('=', 1)[1]} (EMA weights of step 40)" in proc.stdout
    best_b = load_best(run_dir_of(tuned) / "best.pt")
    for key, weight in best_a["ema_model"].items():  # lr 1e-9: the weights it started from
        assert torch.allclose(best_b["model"][key], weight, atol=1e-6), key
    assert best_b["step"] == 1  # its own count, optimizer and schedule
    assert {int(s["step"]) for s in best_b["optimizer"]["state"].values()} == {1}
    # Validation loss: where run a left off, not where a fresh model starts.
    val_fresh = load_best(run_dir_of(fresh) / "best.pt")["val_loss"]
    assert best_b["val_loss"] == pytest.approx(best_a["val_loss"], rel=1e-4)
    assert abs(val_fresh - best_a["val_loss"]) > 1e-2  # 0.04 when written

    other = args_for(shards, tmp_path / "c", "model.channels=8", init)
    proc = python_run([TRAIN, *other], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {init}: its model is not this config's: model.channels" in proc.stderr
    missing = args_for(shards, tmp_path / "d", "train.init_from=nope/best.pt")
    proc = python_run([TRAIN, *missing], check=False)
    assert proc.returncode == 2 and "nope/best.pt: checkpoint not found" in proc.stderr
