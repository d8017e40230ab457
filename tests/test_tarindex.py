"""The by-offset tar reader gives WebDataset's samples and reads only what is sliced."""

import contextlib
import io
import tarfile
import time

import numpy as np
import pytest
import torch
import webdataset as wds

from diffdenoise.data import audio, recvpool, remote, tarindex
from diffdenoise.data import pipeline as data
from diffdenoise.data.shards import DataError
from tests.helpers import make_shards


def wds_samples(url):
    return list(wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()))


def as_bytes(sample):
    return {k: v if k.startswith("__") else bytes(v) for k, v in sample.items()}


@pytest.mark.parametrize("fmt", ["flac", "pcm16"])
def test_samples_equal_webdatasets(tmp_path, fmt):
    shards = make_shards(tmp_path, n=6, extra=["--format", fmt])
    for url in sorted(map(str, shards.glob("*.tar"))):
        ours = [as_bytes(s) for s in tarindex.samples(url)]
        assert ours and ours == wds_samples(url)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_skipped_members_group_as_webdataset_does(tmp_path, fmt):
    path = tmp_path / "long.tar"
    long_key = "d/" + "x" * 150 + "/utt"
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE  # a directory entry is not a member
        tar.addfile(folder)
        for name, payload in [
            (f"{long_key}.wav", b"RIFF-ish"),
            (f"{long_key}.JSON", b"{}"),
            ("__meta__.txt", b"skipped"),
            ("b.flac", b"f" * 700),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ours = [as_bytes(s) for s in tarindex.samples(str(path))]
    assert ours == wds_samples(str(path))
    assert ours[0]["__key__"] == long_key and ours[0]["json"] == b"{}"
    assert [sorted(s) for s in ours[1:]] == [
        ["__key__", "__url__", "txt"],
        ["__key__", "__url__", "flac"],
    ]
    assert ours[2]["flac"] == b"f" * 700


def test_member_slices_like_bytes_and_reads_only_the_slice(tmp_path):
    payload = bytes(range(256)) * 40
    path = tmp_path / "one.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("k.wav")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (member,) = [s["wav"] for s in tarindex.samples(str(path))]
    assert len(member) == len(payload) and bytes(member) == payload
    for a, b in [(0, 4), (8, 12), (100, 300), (5000, 6000), (10200, 99999), (7, 7)]:
        assert member[a:b] == payload[a:b]
    stats = tarindex.read_stats()
    member[2000:2100]
    assert tarindex.read_stats()[1] - stats[1] == 100  # bytes read from disk


def test_wav_crops_from_members_equal_crops_from_bytes(tmp_path):
    shards = make_shards(tmp_path, n=4, extra=["--format", "pcm16"])
    url = str(sorted(shards.glob("train-*.tar"))[0])
    for ours, theirs in zip(tarindex.samples(url), wds_samples(url)):
        lazy, whole = audio.Encoded(ours["wav"]), audio.Encoded(theirs["wav"])
        assert lazy.frames == whole.frames > 0
        np.testing.assert_array_equal(
            lazy.read(37, 500, keep_int16=True), whole.read(37, 500, keep_int16=True)
        )
        np.testing.assert_array_equal(lazy.read(5), whole.read(5))


def damaged_copies(tmp_path):
    """A copy of a shard with its second header garbled, and one cut mid-member."""
    shards = make_shards(tmp_path, n=4)
    src = sorted(shards.glob("train-*.tar"))[0]
    with tarfile.open(src) as tar:
        second = tar.getmembers()[1]
    raw = bytearray(src.read_bytes())
    raw[second.offset + 10] ^= 0xFF
    garbled = tmp_path / "garbled.tar"
    garbled.write_bytes(bytes(raw))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(src.read_bytes()[: second.offset_data + 10])
    return src, garbled, cut, second.offset


def test_damage_names_the_byte_and_keeps_what_came_before(tmp_path):
    src, garbled, cut, offset = damaged_copies(tmp_path)
    first = next(tarindex.samples(str(src)))
    with pytest.raises(DataError, match=f"damaged tar header at byte {offset}"):
        list(tarindex.members(str(garbled)))
    with pytest.raises(DataError, match=f"truncated tar member at byte {offset}"):
        list(tarindex.members(str(cut)))
    with pytest.warns(UserWarning) as caught:
        got = list(tarindex.read_shards([{"url": str(garbled)}, {"url": str(src)}]))
    (warning,) = [str(w.message) for w in caught]
    assert warning.startswith(f"{garbled}: DataError: damaged tar header at byte {offset}")
    # the garbled header is the first sample's second member: that sample is dropped whole
    assert [as_bytes(s) for s in got] == [as_bytes(s) for s in tarindex.samples(str(src))]
    assert as_bytes(first) == as_bytes(got[0])


def test_a_pipe_url_is_fetched_into_memory_and_read_as_a_local_shard(tmp_path):
    shards = make_shards(tmp_path, n=4)
    url = str(sorted(shards.glob("train-*.tar"))[0])
    piped = list(tarindex.read_shards([{"url": f"pipe:cat {url}"}]))
    local = list(tarindex.read_shards([{"url": url}]))
    assert [s["__key__"] for s in piped] == [s["__key__"] for s in local]
    assert all(s["__url__"] == f"pipe:cat {url}" for s in piped)
    for a, b in zip(piped, local):
        assert isinstance(a["flac"], tarindex.Member) and isinstance(
            a["flac"].path, tarindex.Buffer
        )
        assert bytes(a["flac"]) == bytes(b["flac"]) and a["flac"][100:200] == b["flac"][100:200]


def test_loader_batches_are_int16_for_16_bit_shards(tmp_path):
    shards = make_shards(tmp_path, n=6, extra=["--format", "pcm16"])
    mixer = data.Mixer({"gaussian": 1}, 0, 10, 0, 0, "random", 10, 0)
    stream = data.TrainStream(
        data.expand_urls(str(shards / "train-*.tar")), segment=8000, sample_rate=16000,
        batch_size=2, batches=1, mixer=mixer, seed=0, rank=0, world_size=1, shuffle_buffer=4,
    )  # fmt: skip
    batch = next(iter(stream))
    assert batch["clean"].dtype == torch.int16
    rendered = data.render(batch, "cpu")
    assert rendered["clean"].dtype.is_floating_point
    assert rendered["clean"].abs().max() <= 1.0


def test_a_read_shards_memory_receives_the_next_fetch_and_sizes_are_still_checked(
    tmp_path, monkeypatch
):
    shards = make_shards(tmp_path, n=4)
    path = sorted(shards.glob("train-*.tar"))[0]
    url, size = f"pipe:cat {path}", path.stat().st_size
    pool = recvpool.RecvPool()
    monkeypatch.setattr(remote, "POOL", pool)
    monkeypatch.setattr(remote, "_POLICY", remote.FetchPolicy(sizes={url: size}))

    first = tarindex.Buffer(remote.fetch_bytes(url), url)
    memory = first.data.obj
    samples = list(tarindex.samples(first))
    del first
    assert pool.idle_bytes() == 0  # the samples still point into it
    del samples
    assert pool.idle_bytes() == len(memory) > size  # one byte more: an overlong one shows
    again = remote.fetch_bytes(url)
    assert again.obj is memory and pool.idle_bytes() == 0
    assert bytes(again) == path.read_bytes()
    remote.recycle(again)

    short, long = f"truncated download, {size} of {size + 1}", f"{size} bytes downloaded"
    for listed, error in ((size + 1, short), (size - 1, long)):
        remote.configure(remote.FetchPolicy(sizes={url: listed}))
        with pytest.raises(remote.FetchError, match=error):
            remote.fetch_bytes(url, tries=1)
    assert any(b is memory for b in pool.free)  # a failed try gives its memory back
    idle = pool.idle_bytes()
    pool.give(bytearray(100), keep_bytes=idle + 99)
    assert pool.idle_bytes() == idle  # more than the policy keeps idle: let go


def test_a_fetched_pcm16_shard_is_read_without_copies_and_reused_only_when_unviewed(
    tmp_path, monkeypatch
):
    """Members of a shard in memory are views of its buffer: the loader's int16 crops equal
    the file's, and the buffer receives no later fetch while a crop still views it."""
    shards = make_shards(tmp_path, n=4, extra=["--format", "pcm16"])
    path = sorted(shards.glob("train-*.tar"))[0]
    url = f"pipe:cat {path}"
    pool = recvpool.RecvPool()
    monkeypatch.setattr(remote, "POOL", pool)
    monkeypatch.setattr(remote, "_POLICY", remote.FetchPolicy(sizes={url: path.stat().st_size}))

    fetched = tarindex.Buffer(remote.fetch_bytes(url), url)
    memory = fetched.data.obj
    from_memory = list(tarindex.samples(fetched))
    member = audio.member(from_memory[0])
    assert isinstance(member[:1000], memoryview) and member[:1000].obj is memory  # no copy
    crops = [audio.Encoded(audio.member(s)).read(keep_int16=True) for s in from_memory]
    from_file = [audio.Encoded(audio.member(s)).read(keep_int16=True)
                 for s in tarindex.samples(str(path))]  # fmt: skip
    assert len(crops) == len(from_file) and all(map(np.array_equal, crops, from_file))

    del fetched, from_memory, member
    assert pool.free == [memory] and recvpool.in_use(memory)  # the crops view it still
    assert remote.fetch_bytes(url).obj is not memory  # so the next fetch gets other memory
    del crops
    assert not recvpool.in_use(memory) and bytes(memory[:512]) == path.read_bytes()[:512]
    assert remote.fetch_bytes(url).obj is memory  # now it is free to receive again


def test_an_epoch_fetches_ahead_only_the_shards_it_can_read(tmp_path, monkeypatch):
    """Each epoch starts its own reader: fetching ahead past what the epoch can read (its
    batches and the shuffle buffer) fetched up to IN_FLIGHT shards per epoch and loader
    worker that nothing read. The manifest's counts bound it; the batches stay the same."""
    from diffdenoise.bench.shard_server import ShardServer
    from diffdenoise.data import fetchproc
    from diffdenoise.data.shards import manifest_stats

    folder = make_shards(tmp_path, n=24, shard_mb=0.01, extra=["--max-seconds", "1"])
    names = sorted(p.name for p in folder.glob("train-*.tar"))
    assert len(names) >= 12
    monkeypatch.setattr(fetchproc, "_HELPER", [None, 0])
    mixer = data.Mixer({"gaussian": 1.0}, -5.0, 20.0, -10.0, 6.0, "random", 1000, 0)
    with ShardServer(folder) as server, contextlib.ExitStack() as cleanup:
        cleanup.callback(kill_helper, fetchproc)  # even when an assertion fails
        urls = [f"{server.url}/{name}" for name in names]
        stats = manifest_stats(urls)
        monkeypatch.setattr(remote, "_POLICY", remote.FetchPolicy(sizes=stats["sizes"]))

        def epoch(counts):
            server.requests.clear()
            stream = data.TrainStream(
                urls, segment=4000, sample_rate=16000, batch_size=2, batches=2, mixer=mixer,
                seed=0, rank=0, world_size=1, shuffle_buffer=3, shard_samples=counts,
            )  # fmt: skip
            batches = list(stream)
            time.sleep(0.5)  # requests the reader left behind would arrive by now
            return batches, sum(server.requests.values())

        ahead, fetched_ahead = epoch(None)
        bounded, fetched = epoch(stats["counts"])
    order = data._crc([0, 0, 0, 0], "shards")  # (seed, epoch, rank, worker)
    need = 2 * 2 + 3 + 1  # the batches' samples, the shuffle buffer's, one more
    horizon = data.read_horizon(data.slot_shards(urls, 0, 0, 0, 1), order, stats["counts"], need)
    assert fetched == horizon < fetched_ahead
    for a, b in zip(ahead, bounded, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["clean"], b["clean"])


def kill_helper(fetchproc) -> None:
    """This process's fetch helper, if one started, killed and reaped."""
    helper = fetchproc._HELPER[0]
    if helper is not None:
        helper.process.kill()
        helper.process.wait()
