"""Training from remote shards, against a real HTTP server this test starts (Python's
http.server in a thread): plain URLs and ``pipe:curl``, the manifest over HTTP, retries,
a truncated download, a 404, a server that stops mid-run, and the local cache."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from diffdenoise.bench.shard_server import ShardServer
from tests.distributed import ROOT, accelerate_launch, cpu_env, python_run
from tests.helpers import make_shards, run_args, run_losses, run_metric

pytestmark = pytest.mark.slow
TRAIN = "launch/train.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote")
    folder = make_shards(tmp, n=8, extra=["--val-fraction", "0.25", "--max-seconds", "1"])
    assert sorted(p.name for p in folder.glob("train-*.tar")) == [
        "train-000000.tar", "train-000001.tar",
    ]  # fmt: skip
    return folder


@pytest.fixture
def server(shards):
    with ShardServer(shards) as running:
        yield running


def test_http_shards_train_exactly_as_local_files_and_resume_exactly(shards, server, tmp_path):
    steps = ["train.max_steps=6", "train.val_every=6", "checkpoint.every=3"]
    local = run_args(f"{shards}/train-*.tar", f"{shards}/val-*.tar", tmp_path / "l", *steps)
    python_run([TRAIN, *local])
    http = (
        f"{server.url}/train-{{000000..000001}}.tar",
        f"{server.url}/val-{{000000..000001}}.tar",
    )
    python_run([TRAIN, *run_args(*http, tmp_path / "h", *steps)])
    assert run_losses(tmp_path / "l") == run_losses(tmp_path / "h")  # same samples, crops and noise
    assert server.requests["manifest.json"] == 2  # once for train, once for val: one process

    (straight,) = [p for p in (tmp_path / "h").iterdir() if p.is_dir()]
    half = f"train.resume={straight / 'state' / 'step-000000003'}"
    python_run([TRAIN, *run_args(*http, tmp_path / "r", *steps, half)])
    resumed, straight_losses = run_losses(tmp_path / "r"), run_losses(tmp_path / "h")
    assert {k: resumed[k] for k in (4, 5, 6)} == {k: straight_losses[k] for k in (4, 5, 6)}


def test_pipe_curl_and_a_manifest_read_once_per_run_not_per_rank(shards, server, tmp_path):
    pipe = "pipe:curl -sf {}/{}-{{000000..000001}}.tar"
    train, val = pipe.format(server.url, "train"), pipe.format(server.url, "val")
    run = run_args(train, val, tmp_path / "p", "train.max_steps=2", "train.val_every=2")
    python_run([TRAIN, *run])
    assert len(run_losses(tmp_path / "p")) == 2
    requests = server.requests["manifest.json"]
    two = run_args(train, val, tmp_path / "two", "train.max_steps=2", "train.val_every=2")
    accelerate_launch([TRAIN, *two], processes=2)
    assert server.requests["manifest.json"] - requests == requests  # 2 ranks: no more reads


def test_a_wrong_url_is_one_line_with_its_status_before_training(shards, server, tmp_path):
    val = f"{server.url}/val-{{000000..000001}}.tar"
    for train in (f"{server.url}/nope-{{000000..000001}}.tar",
                  f"{server.url}/elsewhere/train-000000.tar"):  # fmt: skip
        proc = python_run([TRAIN, *run_args(train, val, tmp_path / "w", "train.max_steps=2")],
                          check=False)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "404 File not found" in proc.stderr and "/train-" not in proc.stdout
        assert not any((tmp_path / "w").glob("*/metrics.jsonl"))


def test_retries_are_counted_and_a_truncated_shard_is_skipped_with_one_warning(
    shards, server, tmp_path
):
    server.failures["train-000000.tar"] = 2  # two 503s, then it answers
    server.truncated.add("train-000001.tar")  # always half: never trained on
    urls = (
        f"{server.url}/train-{{000000..000001}}.tar",
        f"{server.url}/val-{{000000..000001}}.tar",
    )
    proc = python_run([TRAIN, *run_args(*urls, tmp_path / "t", "train.max_steps=4",
                                        "train.val_every=4")])  # fmt: skip
    assert "train-000001.tar: DataError: unreachable after retries" in proc.stderr
    size = (shards / "train-000001.tar").stat().st_size
    assert f"truncated download, {size // 2} of {size} bytes" in proc.stderr
    assert proc.stderr.count("train-000001.tar: DataError") == 1
    (line,) = [x for x in proc.stderr.splitlines() if "train-000001.tar: DataError" in x]
    assert line.startswith(f"warning: {server.url}/train-000001.tar: DataError: unreachable")
    assert "tarindex.py" not in proc.stderr  # one line, not Python's file and source line
    assert run_metric(tmp_path / "t", "train/shard_retries")[-1] >= 2 + 2


def test_a_server_that_stops_mid_run_ends_it_in_one_line(shards, server, tmp_path):
    urls = (
        f"{server.url}/train-{{000000..000001}}.tar",
        f"{server.url}/val-{{000000..000001}}.tar",
    )
    forever = ["train.max_steps=100000", "train.val_every=100000", "data.shuffle_buffer=4"]
    cmd = [sys.executable, TRAIN, *run_args(*urls, tmp_path / "s", *forever)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "s").glob("*/metrics.jsonl")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        server.stop()
        stopped = time.time()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "shards in a row could not be fetched" in line and "Connection refused" in line
    assert time.time() - stopped < 60


def test_the_cache_fetches_each_shard_once_and_refetches_a_damaged_copy(shards, server, tmp_path):
    cache = tmp_path / "cache"
    urls = (
        f"{server.url}/train-{{000000..000001}}.tar",
        f"{server.url}/val-{{000000..000001}}.tar",
    )
    epochs = ["train.max_epochs=3", "train.val_every=100000", f"data.cache_dir={cache}"]
    python_run([TRAIN, *run_args(*urls, tmp_path / "c", *epochs)])
    for name in ("train-000000.tar", "train-000001.tar", "val-000000.tar"):
        assert server.requests[name] == 1, name  # every epoch of 200 steps, one fetch
    (copy,) = cache.glob("*-train-000000.tar")
    assert copy.stat().st_size == (shards / "train-000000.tar").stat().st_size
    with open(copy, "r+b") as f:
        f.truncate(1000)  # damaged: fetched again
    python_run([TRAIN, *run_args(*urls, tmp_path / "c2", *epochs)])
    assert server.requests["train-000000.tar"] == 2 and server.requests["train-000001.tar"] == 1
    assert copy.read_bytes() == (shards / "train-000000.tar").read_bytes()


def test_without_a_manifest_steps_train_and_epochs_stop_in_one_line(shards, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(shards, bare)
    os.remove(bare / "manifest.json")
    with ShardServer(bare) as server:
        urls = (f"{server.url}/train-{{000000..000001}}.tar",
                f"{server.url}/val-{{000000..000001}}.tar")  # fmt: skip
        proc = python_run([TRAIN, *run_args(*urls, tmp_path / "n", "train.max_steps=3",
                                            "train.val_every=3")])  # fmt: skip
        assert "no manifest.json reachable beside" in proc.stdout
        assert proc.stdout.count("no manifest.json reachable") == 2  # train, val: one line each
        assert len(run_losses(tmp_path / "n")) == 3
        proc = python_run([TRAIN, *run_args(*urls, tmp_path / "e", "train.max_epochs=1",
                                            "train.max_steps=0")], check=False)  # fmt: skip
        assert proc.returncode == 2
        assert "train.max_epochs needs the shards' manifest" in proc.stderr.strip().splitlines()[-1]
        # data.manifest names one kept elsewhere (a path here; a URL works the same)
        given = f"data.manifest={shards / 'manifest.json'}"
        proc = python_run([TRAIN, *run_args(*urls, tmp_path / "m", "train.max_epochs=1",
                                            "train.max_steps=0", given)])  # fmt: skip
        assert "no manifest.json reachable" not in proc.stdout
        assert "finished at step 4" in proc.stdout  # 16 samples, batch 4: one epoch


def test_evaluate_and_tune_read_http_shards_as_training_does(shards, server, tmp_path):
    """``--shards`` of evaluate (and tune, through the same reader) takes URLs: the same
    scores as from the local files, and a dead server is one line, exit 2."""
    reports = {}
    for name, where in (("local", f"{shards}/val-*.tar"),
                        ("http", f"{server.url}/val-{{000000..000001}}.tar")):  # fmt: skip
        out = tmp_path / f"{name}.json"
        evaluate = ["-m", "diffdenoise.evaluate", "--baseline", "--shards", where, "--snr", "5",
                    "--json", str(out)]  # fmt: skip
        python_run(evaluate)
        reports[name] = json.loads(out.read_text())
    assert reports["http"]["summary"] == reports["local"]["summary"]
    assert reports["http"]["summary"]["all"]["wiener"]["n"] == 10  # every val sample

    server.stop()
    dead = f"{server.url}/val-{{000000..000001}}.tar"
    checkpoint = "tests/data/premove-spectral/best.pt"
    for command in (["-m", "diffdenoise.evaluate", "--baseline", "--shards", dead],
                    ["-m", "diffdenoise.tune", checkpoint, "--shards", dead, "-o",
                     str(tmp_path / "t.pt")]):  # fmt: skip
        proc = python_run([*command, "--snr", "5"], check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --shards {dead}: 2 shards in a row could not be fetched")
