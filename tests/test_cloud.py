"""Training from ``s3://`` and ``gs://`` shards, against real object-store servers this test
starts on loopback: moto's S3 server and gcp-storage-emulator's GCS server, each speaking
its store's REST protocol to the real clients (s3fs/botocore, gcsfs/aiohttp) that a run
on AWS or Google Cloud uses. The shards are uploaded as a user uploads what ``make shards``
wrote; the runs read them through the credentials and endpoint variables the docs name."""

import json
import os
import time

import pytest

from diffdenoise.data import remote
from tests.distributed import cpu_env, free_port, python_run
from tests.helpers import make_shards, run_args, run_losses

# gcsfs reads this on import: its experimental bucket-type lookup speaks gRPC over TLS,
# which the emulator lacks (two 60 s timeouts per process otherwise). Runs get it in env.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

pytestmark = pytest.mark.slow
moto_server = pytest.importorskip("moto.server")
gcs_emulator = pytest.importorskip("gcp_storage_emulator.server")
s3fs = pytest.importorskip("s3fs")
gcsfs = pytest.importorskip("gcsfs")

TRAIN = "launch/train.py"
KEYS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
NO_AWS_FILES = {
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
}  # fmt: skip
GCS_PLAIN = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("cloud"), n=8,
                       extra=["--val-fraction", "0.25", "--max-seconds", "1"])  # fmt: skip


@pytest.fixture(scope="module")
def s3(shards):
    """An S3 endpoint holding the shard folder at ``s3://shards/demo/``; yields the
    environment a run needs to read it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", **KEYS, **NO_AWS_FILES}
    fs = s3fs.S3FileSystem(
        endpoint_url=env["AWS_ENDPOINT_URL"], key=KEYS["AWS_ACCESS_KEY_ID"],
        secret=KEYS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True,
    )  # fmt: skip
    fs.mkdir("shards")
    fs.put(f"{shards}/", "shards/demo/", recursive=True)
    yield env
    server.stop()


@pytest.fixture(scope="module")
def gcs(shards):
    """A GCS endpoint holding the shard folder at ``gs://shards/demo/``."""
    port = free_port()
    server = gcs_emulator.create_server("127.0.0.1", port, in_memory=True,
                                        default_bucket="shards")  # fmt: skip
    server.start()
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", **GCS_PLAIN}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
        fs.put(f"{shards}/", "shards/demo/", recursive=True)
    yield env
    server.stop()


def store_urls(scheme: str, name: str = "train") -> tuple[str, str]:
    return (f"{scheme}://shards/demo/{name}-{{000000..000001}}.tar",
            f"{scheme}://shards/demo/val-{{000000..000001}}.tar")  # fmt: skip


STEPS = ["train.max_steps=4", "train.val_every=4", "checkpoint.every=2"]


@pytest.fixture(scope="module")
def local_losses(shards, tmp_path_factory):
    runs = tmp_path_factory.mktemp("local")
    python_run([TRAIN, *run_args(f"{shards}/train-*.tar", f"{shards}/val-*.tar", runs, *STEPS)])
    return run_losses(runs)


def test_s3_shards_train_exactly_as_local_files_and_resume_exactly(s3, local_losses, tmp_path):
    env = cpu_env(**s3)
    proc = python_run([TRAIN, *run_args(*store_urls("s3"), tmp_path / "s", *STEPS)], env=env)
    assert run_losses(tmp_path / "s") == local_losses  # same samples, crops and noise
    assert "no manifest" not in proc.stdout + proc.stderr  # read from s3:// beside the shards

    (straight,) = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    half = f"train.resume={straight / 'state' / 'step-000000002'}"
    python_run([TRAIN, *run_args(*store_urls("s3"), tmp_path / "r", *STEPS, half)], env=env)
    resumed = run_losses(tmp_path / "r")
    assert {k: resumed[k] for k in (3, 4)} == {k: local_losses[k] for k in (3, 4)}


def test_gs_shards_train_exactly_as_local_files(gcs, local_losses, tmp_path):
    proc = python_run([TRAIN, *run_args(*store_urls("gs"), tmp_path / "g", *STEPS)],
                      env=cpu_env(**gcs))  # fmt: skip
    assert run_losses(tmp_path / "g") == local_losses
    assert "no manifest" not in proc.stdout + proc.stderr  # read from gs:// beside the shards


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_missing_object_is_one_line_before_training(scheme, s3, gcs, tmp_path):
    env = cpu_env(**(s3 if scheme == "s3" else gcs))
    train, val = store_urls(scheme, name="nope")[0], store_urls(scheme)[1]
    proc = python_run([TRAIN, *run_args(train, val, tmp_path / "w", "train.max_steps=2")],
                      env=env, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.count("\n") == 0
    assert last.endswith(f": {scheme}://shards/demo/nope-000000.tar: not found")
    assert not any((tmp_path / "w").glob("*/metrics.jsonl"))


def test_missing_s3_credentials_are_one_line_naming_them(s3, tmp_path):
    env = cpu_env(**s3)
    for key in KEYS:
        env.pop(key)
    proc = python_run([TRAIN, *run_args(*store_urls("s3"), tmp_path / "c", "train.max_steps=2")],
                      env=env, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "s3://shards/demo/" in last
    assert "NoCredentialsError: Unable to locate credentials" in last


def test_a_store_that_went_away_is_a_transient_one_line_failure_in_bounded_time(
    shards, monkeypatch
):
    """What a run's loader sees when the store stops: a :class:`FetchError` it may retry,
    one line, no traceback, within the client's own retries (the mid-run path from there
    is the one tests/test_remote.py runs over HTTP)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", **KEYS,
                       **NO_AWS_FILES}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("gone")
    fs.put_file(str(shards / "train-000000.tar"), "gone/train-000000.tar")
    url = "s3://gone/train-000000.tar"
    view = remote.fetch_bytes(url, remote.FetchPolicy(retries=0))
    assert bytes(view) == (shards / "train-000000.tar").read_bytes()
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    start = time.monotonic()
    with pytest.raises(remote.FetchError) as caught:
        remote.fetch_bytes(url, remote.FetchPolicy(retries=0))
    assert caught.value.transient and time.monotonic() - start < 30
    endpoint = f"http://{host}:{port}/gone/train-000000.tar"
    assert str(caught.value) == (
        f'{url}: EndpointConnectionError: Could not connect to the endpoint URL: "{endpoint}"'
    )


def test_a_missing_backend_is_one_line_naming_the_extra(tmp_path):
    """Without s3fs (hidden from this run, as on an install without the extra)."""
    hide = "import sys; sys.modules['s3fs'] = None; import runpy; sys.argv = sys.argv[1:]; "
    code = hide + f"runpy.run_path({TRAIN!r}, run_name='__main__')"
    args = run_args(*store_urls("s3"), tmp_path / "m", "train.max_steps=2")
    proc = python_run(["-c", code, TRAIN, *args], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "s3:// shards need s3fs (pip install 'diffdenoise[cloud]')" in last


def test_store_errors_are_sorted_into_retry_or_stop():
    """Which client-library failures a fetch retries (a lost connection, throttling, a 5xx)
    and which stop at once (a missing object or credentials)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
    from gcsfs.retry import HttpError

    from diffdenoise.data import cloud

    def transient(err):
        return cloud.is_transient(err, remote.TRANSIENT_HTTP)

    throttled = ClientError({"Error": {"Code": "SlowDown"},
                             "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")  # fmt: skip
    denied = ClientError({"Error": {"Code": "AccessDenied"},
                          "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")  # fmt: skip
    assert transient(EndpointConnectionError(endpoint_url="http://x"))
    assert transient(throttled) and not transient(denied)
    assert transient(HttpError({"code": 503, "message": "backend"}))
    assert not transient(HttpError({"code": 404, "message": "no such object"}))
    assert not transient(NoCredentialsError())
    assert not transient(FileNotFoundError("bucket/key"))
    assert all(cloud.is_client_error(e) for e in (throttled, NoCredentialsError()))
    assert not cloud.is_client_error(TypeError("a bug"))


def test_evaluate_reads_s3_shards_as_local_files(shards, s3, tmp_path):
    """``evaluate --shards`` (and ``tune``, through the same reader) on ``s3://`` URLs:
    the same scores as from the local files (WebDataset's reader has no s3:// handler)."""
    summaries = {}
    for name, where in (("local", f"{shards}/val-*.tar"), ("s3", store_urls("s3")[1])):
        out = tmp_path / f"{name}.json"
        python_run(["-m", "diffdenoise.evaluate", "--baseline", "--shards", where, "--snr", "5",
                    "--json", str(out)], env=cpu_env(**s3))  # fmt: skip
        summaries[name] = json.loads(out.read_text())["summary"]
    assert summaries["s3"] == summaries["local"] and summaries["s3"]["all"]["wiener"]["n"] == 10
