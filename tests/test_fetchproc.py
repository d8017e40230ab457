"""Remote shards received by a helper process into memory files the loader maps, against a
real HTTP server (Python's http.server in a thread) and a real helper process."""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from diffdenoise.bench.shard_server import ShardServer
from diffdenoise.data import audio, fetchproc, remote, tarindex
from tests.helpers import make_shards

pytestmark = pytest.mark.skipif(not fetchproc.AVAILABLE, reason="needs memfd_create (Linux)")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = make_shards(tmp_path_factory.mktemp("fetchproc"), n=6, extra=["--format", "pcm16"])
    paths = sorted(folder.glob("train-*.tar"))
    assert len(paths) >= 2
    return paths


@pytest.fixture
def served(shards, monkeypatch):
    """The shards' folder served over HTTP, a fetch policy listing their sizes, and a
    helper of this test's own."""
    with ShardServer(shards[0].parent) as server:
        urls = [f"{server.url}/{p.name}" for p in shards]
        sizes = {url: p.stat().st_size for url, p in zip(urls, shards, strict=True)}
        monkeypatch.setattr(remote, "_POLICY", remote.FetchPolicy(sizes=sizes, retries=0))
        monkeypatch.setattr(fetchproc, "_HELPER", [None, 0])
        yield server, urls
        helper = fetchproc._HELPER[0]
        if helper is not None:
            helper.process.kill()
            helper.process.wait()


def wait_until(condition, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def fetch(url: str) -> memoryview:
    """Shard ``url`` fetched as a loader fetches it, waited for."""
    return fetchproc.submit(ThreadPoolExecutor(1), url).result(timeout=60)


def ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie that its new parent has not
    reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_shard_from_the_helper_reads_as_its_local_file(shards, served):
    _, urls = served
    view = fetch(urls[0])
    assert view.readonly and bytes(view) == shards[0].read_bytes()
    fetched = [audio.Encoded(audio.member(s)).read(keep_int16=True)
               for s in tarindex.samples(tarindex.Buffer(view, urls[0]))]  # fmt: skip
    local = [audio.Encoded(audio.member(s)).read(keep_int16=True)
             for s in tarindex.samples(str(shards[0]))]  # fmt: skip
    assert len(fetched) == len(local) and all(map(np.array_equal, fetched, local))
    assert fetchproc._HELPER[0].process.poll() is None  # one helper, still serving


def test_memory_is_received_into_again_only_once_no_crop_views_it(shards, served):
    _, urls = served
    helper = fetchproc._helper()
    first = tarindex.Buffer(fetch(urls[0]), urls[0])
    crop = np.frombuffer(audio.member(next(tarindex.samples(first)))[:4000], np.uint8)
    kept = crop.copy()
    del first  # the shard is read, but the crop still views its memory
    second = fetch(urls[1])
    assert len(helper.maps) == 2  # so the second shard was received elsewhere
    assert np.array_equal(crop, kept) and bytes(second) == shards[1].read_bytes()

    del crop, second  # now nothing views either: both files go back to the helper
    time.sleep(0.2)  # the helper takes the messages back before the next request
    third = fetch(urls[0])
    assert len(helper.maps) == 2  # received into a file already mapped, not a new one
    assert bytes(third) == shards[0].read_bytes()


def test_idle_memory_beyond_the_read_ahead_is_let_go_on_both_sides(served, monkeypatch):
    _, urls = served
    monkeypatch.setattr(remote, "_POLICY", remote.FetchPolicy(sizes=remote.policy().sizes,
                                                              read_ahead_mb=0.0))  # fmt: skip
    view = fetch(urls[0])
    helper = fetchproc._HELPER[0]
    assert len(helper.maps) == 1
    del view
    assert wait_until(lambda: not helper.maps)  # the helper closed it, and said so


def test_a_truncated_download_and_a_404_fail_one_try_in_one_line(shards, served):
    server, urls = served
    server.truncated.add(shards[0].name)
    size = shards[0].stat().st_size
    with pytest.raises(remote.FetchError, match=f"truncated download, {size // 2} of {size}"):
        fetch(urls[0])
    remote.configure(remote.FetchPolicy(sizes=remote.policy().sizes, read_ahead_mb=0.0))
    with pytest.raises(remote.FetchError, match="truncated download"):
        fetch(urls[0])  # its memory, never sent here, let go at once
    with pytest.raises(remote.FetchError, match="HTTP 404") as missing:
        fetch(f"{server.url}/train-999999.tar")
    assert not missing.value.transient
    assert bytes(fetch(urls[1])) == shards[1].read_bytes()  # the helper lives


def test_what_a_killed_helper_had_not_answered_goes_to_another_once(shards, served):
    server, urls = served
    server.latency = 1.0  # the fetch is in flight when the helper dies
    first = fetchproc._helper()
    threading.Timer(0.3, os.kill, (first.process.pid, signal.SIGKILL)).start()
    assert bytes(fetch(urls[0])) == shards[0].read_bytes()
    second = fetchproc._HELPER[0]
    assert second is not first and first.process.wait() == -signal.SIGKILL

    def kill_twice():  # the first helper, then the one the request went to next
        time.sleep(0.3)
        os.kill(second.process.pid, signal.SIGKILL)
        assert wait_until(lambda: fetchproc._HELPER[0] is not second)
        time.sleep(0.3)
        os.kill(fetchproc._HELPER[0].process.pid, signal.SIGKILL)

    threading.Thread(target=kill_twice).start()
    with pytest.raises(remote.FetchError, match="the fetch process has exited") as lost:
        fetch(urls[0])
    assert lost.value.transient  # the loader skips the shard with a warning, and goes on
    server.latency = 0.0
    assert bytes(fetch(urls[1])) == shards[1].read_bytes()


def test_retries_in_the_helper_are_counted_in_the_worker(shards, served):
    server, urls = served
    remote.configure(remote.FetchPolicy(sizes=remote.policy().sizes, retries=3))
    remote.take_retries()
    server.failures[shards[0].name] = 2
    assert bytes(fetch(urls[0])) == shards[0].read_bytes()
    assert remote.take_retries() == 2 and server.requests[shards[0].name] == 3
    server.failures[shards[0].name] = 9
    with pytest.raises(remote.FetchError, match="HTTP 503"):
        fetch(urls[0])
    assert remote.take_retries() == 3


def test_the_helper_ignores_ctrl_c_and_ends_with_its_worker(served):
    _, urls = served
    assert bytes(fetch(urls[0]))
    helper = fetchproc._HELPER[0]
    assert os.getpgid(helper.process.pid) != os.getpgid(0)  # a terminal's Ctrl-C misses it
    if sys.version_info >= (3, 11):  # in the worker's session, which the kernel weighs
        assert os.getsid(helper.process.pid) == os.getsid(0)
    os.kill(helper.process.pid, signal.SIGINT)  # and one sent to it is ignored
    assert bytes(fetch(urls[1]))
    assert fetchproc._HELPER[0] is helper
    code = (
        "import sys; from diffdenoise.data import fetchproc, remote; "
        "remote.configure(remote.FetchPolicy(retries=0)); fetchproc.submit(None, sys.argv[1])"
        ".result(); print(fetchproc._HELPER[0].process.pid)"
    )
    worker = subprocess.run([sys.executable, "-c", code, urls[0]], capture_output=True,
                            text=True, check=True)  # fmt: skip
    pid = int(worker.stdout)
    assert wait_until(lambda: ended(pid))  # no orphan left behind
    assert worker.stderr == ""


def thread_nices(pid: int) -> set[int]:
    """The niceness of each live thread of process ``pid`` (field 19 of its ``stat``); a
    thread that ends between the listing and the read is not counted."""
    nices = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                nices.add(int(stat.read().rsplit(")", 1)[1].split()[16]))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a short-lived thread that ended meanwhile
    return nices


def test_every_thread_of_the_helper_yields_the_core_to_the_loader(served):
    _, urls = served
    list(fetchproc.submit(None, url) for url in urls)[-1].result(timeout=60)  # threads at work
    helper = fetchproc._HELPER[0]
    assert len(os.listdir(f"/proc/{helper.process.pid}/task")) > 1
    assert thread_nices(helper.process.pid) == {fetchproc.NICE}
    assert thread_nices(os.getpid()) == {os.nice(0)}  # the worker keeps its own


def test_where_no_helper_can_run_the_workers_threads_fetch_the_same_bytes(
    shards, served, monkeypatch
):
    _, urls = served
    monkeypatch.setattr(fetchproc, "AVAILABLE", False)
    view = fetch(urls[0])
    assert isinstance(view.obj, bytearray) and bytes(view) == shards[0].read_bytes()
    assert fetchproc._HELPER[0] is None  # no helper was started
