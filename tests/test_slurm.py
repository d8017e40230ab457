"""A real two-node SLURM cluster on this machine: train.sbatch saves, requeues and resumes.

The cluster (Debian's slurm-wlm + munge, two fake nodes on 127.0.0.1) is brought up by
tests/slurm/cluster.sh, which installs SLURM if it is missing; where that is impossible
(no root, no package index) the test is skipped with the reason.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed import ROOT, cpu_env
from tests.helpers import make_shards

pytestmark = pytest.mark.slow
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
MAX_STEPS = 300


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm") / "state"
    up = subprocess.run(["bash", str(CLUSTER), "up", str(state)], capture_output=True, text=True)
    if up.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: no SLURM cluster could be started here: {up.stderr[-400:]}")
    env = cpu_env(SLURM_CONF=str(state / "slurm.conf"), DIFFDENOISE_PYTHON=sys.executable)
    env.pop("ACCELERATE_USE_CPU")  # the job script decides, from the GPUs SLURM gives it
    yield env
    subprocess.run(["bash", str(CLUSTER), "down", str(state)], check=False)


def job_fields(env, job: str) -> dict:
    out = subprocess.run(
        ["scontrol", "show", "job", job, "-o"], env=env, capture_output=True, text=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_train_sbatch_requeues_on_usr1_and_resumes(slurm, tmp_path):
    shards = make_shards(tmp_path, n=8, extra=["--max-seconds", "1"])
    runs = tmp_path / "runs"
    args = [
        "configs/tiny.yaml",
        f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/val-*.tar",
        f"train.runs_dir={runs}",
        "train.run_name=slurm",
        f"train.max_steps={MAX_STEPS}",
        "train.val_every=100",
        "checkpoint.every=100",
        "data.segment=4000",
        "train.batch_size=4",
        "log.every=5",
    ]
    submit = subprocess.run(
        ["sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1",
         f"--output={tmp_path}/slurm-%j.out", "launch/slurm/train.sbatch", *args],
        env=slurm, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submit.stdout.strip().split(";")[0]
    log = runs / "slurm" / f"slurm-{job}.out"
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    wait_for(lambda: "started job" in text() and "step 20:" in text(), 180, "20 steps")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)

    def finished():
        fields = job_fields(slurm, job)
        return fields if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED") else None

    fields = wait_for(finished, 400, f"job {job} to finish")
    body = text()
    assert fields["JobState"] == "COMPLETED", body[-3000:]
    assert fields["Restarts"] == "1", body[-3000:]
    assert "SLURM_RESTART_COUNT=0" in body and "SLURM_RESTART_COUNT=1" in body
    # world size 2, printed by each node's local main process, before and after the requeue
    assert body.count("2 process(es) on cpu") == 4
    assert body.count("node 0 (") == body.count("node 1 (") == 2
    saved = int(re.search(r"preempted at step (\d+): state saved", body).group(1))
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", body).group(1))
    assert 20 <= saved < MAX_STEPS and resumed == saved  # not from zero, nothing lost
    assert "requeueing job" in body and "training finished" in body and "FAILED" not in body
    # run-wide lines once per run, not once per node
    assert body.count(f"finished at step {MAX_STEPS} ") == 1
    assert body.count(f"step {saved}: validation loss") == 1
    run_dir = runs / "slurm"
    assert (run_dir / "best.pt").exists() and not (run_dir / "PREEMPTED").exists()
    steps = [
        json.loads(x).get("step") for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(s for s in steps if s is not None) == MAX_STEPS
    wandb_runs = {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert wandb_runs == {(run_dir / "wandb_id").read_text().strip()}  # one W&B run, continued


def test_failure_is_not_requeued(slurm, tmp_path):
    submit = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=1",
         f"--output={tmp_path}/slurm-%j.out", "launch/slurm/train.sbatch", "configs/tiny.yaml",
         f"train.runs_dir={tmp_path}/runs", "data.train_shards=/nowhere/*.tar"],
        env=slurm, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submit.stdout.strip().split(";")[0]
    fields = wait_for(
        lambda: (f := job_fields(slurm, job)).get("JobState") in ("COMPLETED", "FAILED") and f,
        120,
        "the job to end",
    )
    (log,) = Path(tmp_path, "runs").glob("*/slurm-*.out")
    body = log.read_text()
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", body
    assert "no shard matches this path or glob" in body
    assert "training FAILED with exit code" in body and "not requeueing" in body


def test_shards_array_then_merge(slurm, tmp_path):
    from tests.helpers import make_corpus

    corpus = make_corpus(tmp_path / "corpus", n=6)
    out = tmp_path / "shards"
    env = dict(slurm, SHARDS_OUT=str(out))
    submit = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1",
         str(ROOT / "launch/slurm/shards.sbatch"), str(corpus), "big", "--val-fraction", "0.3"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    array = submit.stdout.strip().split(";")[0]
    manifest = out / "big" / "manifest.json"
    wait_for(lambda: manifest.exists(), 120, "the merge job's manifest")
    data = json.loads(manifest.read_text())
    logs = "".join(p.read_text() for p in tmp_path.glob("shards-*.out"))
    assert f"after array job {array}" in logs and "part 1/2" in logs and "part 0/2" in logs
    splits = data["splits"]
    assert splits["train"]["samples"] + splits["val"]["samples"] >= 6
    listed = {s["file"] for split in splits.values() for s in split["shards"]}
    assert listed == {p.name for p in (out / "big").glob("*.tar")}  # both parts, merged
