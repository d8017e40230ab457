import io
import json
import os
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf

from diffdenoise.data import audio, flacseek
from diffdenoise.data import sharding as shard
from tests.helpers import make_corpus, write_speech


def run(*args):
    return shard.main([str(a) for a in args])


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_user_folder_with_bad_files(tmp_path, capsys):
    src = make_corpus(tmp_path / "gt", n=3)
    write_speech(src / "stereo" / "cd.wav", 3.0, rate=44100, channels=2, seed=9)
    (src / "empty.wav").write_bytes(b"")
    (src / "corrupt.flac").write_bytes(b"fLaC" + b"\x00garbage" * 50)
    (src / "notes.txt").write_text("not audio")
    sf.write(str(src / "silent.wav"), np.zeros(16000, np.float32), 16000)
    sf.write(str(src / "short.wav"), np.full(100, 0.1, np.float32), 16000)
    sf.write(str(src / "zero.wav"), np.zeros(0, np.float32), 16000)
    assert run(src, "--name", "user", "--out", tmp_path / "shards", "--val-fraction", "0") == 0
    out = tmp_path / "shards" / "user"
    m = json.loads((out / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert "empty" in reasons["empty.wav"]
    assert "corrupt" in reasons["corrupt.flac"]
    assert "extension" in reasons["notes.txt"]
    assert "silent" in reasons["silent.wav"]
    assert "min-seconds" in reasons["short.wav"]
    assert "zero-length" in reasons["zero.wav"]
    err = capsys.readouterr().err
    assert f"skipped {src / 'corrupt.flac'}: unreadable or corrupt" in err
    # the stereo 44.1 kHz file is kept, downmixed and resampled to 16 kHz
    with tarfile.open(out / "train-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    cd = [x for x in metas if x["source"] == "stereo/cd.wav"]
    assert cd and cd[0]["orig_rate"] == 44100 and cd[0]["orig_channels"] == 2
    assert cd[0]["duration"] == pytest.approx(3.0, abs=1e-3)
    assert m["splits"]["train"]["samples"] == 4 and m["sample_rate"] == 16000


def test_manifest_fields_and_shard_checksums(tmp_path):
    src = make_corpus(tmp_path / "gt", n=8, seconds=3)
    assert (
        run(
            src,
            "--name",
            "c",
            "--out",
            tmp_path / "s",
            "--shard-mb",
            "0.05",
            "--max-seconds",
            "1.5",
            "--val-fraction",
            "0.3",
        )
        == 0
    )
    out = tmp_path / "s" / "c"
    m = json.loads((out / "manifest.json").read_text())
    assert m["command"].startswith("python -m diffdenoise.shard")
    for split in ("train", "val"):
        info = m["splits"][split]
        assert info["samples"] == sum(s["samples"] for s in info["shards"]) > 0
        assert info["seconds"] == pytest.approx(sum(s["seconds"] for s in info["shards"]))
        for s in info["shards"]:
            import hashlib

            assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    assert len(m["splits"]["train"]["shards"]) > 1  # cut at the target size
    # chunks are at most --max-seconds and one file's chunks never straddle the split
    sources = {}
    for split in ("train", "val"):
        for s in m["splits"][split]["shards"]:
            with tarfile.open(out / s["file"]) as tar:
                for member in tar:
                    if member.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(member).read())
                        assert meta["duration"] <= 1.5 + 1e-6
                        sources.setdefault(meta["source"], set()).add(split)
    assert all(len(splits) == 1 for splits in sources.values())
    assert {"train", "val"} == set().union(*sources.values())


def test_output_identical_for_any_worker_count(tmp_path):
    src = make_corpus(tmp_path / "gt", n=6)
    outs = []
    for workers in (1, 2, 3):
        name = f"w{workers}"
        args = ["--workers", workers, "--shard-mb", "0.05", "--max-seconds", "1"]
        run(src, "--name", name, "--out", tmp_path / "s", *args)  # files straddle shards
        outs.append(shard_bytes(tmp_path / "s" / name))
        assert not list((tmp_path / "s" / name).glob(".*"))  # no spool or temp file is left
    assert len(outs[0]) > 3 and outs[0] == outs[1] == outs[2]


def test_shards_are_the_tars_tarfile_writes(tmp_path):
    src = make_corpus(tmp_path / "gt", n=4)
    run(src, "--name", "a", "--out", tmp_path / "s", "--workers", "2", "--shard-mb", "0.1")
    for path in sorted((tmp_path / "s" / "a").glob("*.tar")):
        again = io.BytesIO()
        with tarfile.open(path) as tin, tarfile.open(fileobj=again, mode="w") as tout:
            tout.format = tarfile.USTAR_FORMAT
            for member in tin:
                tout.addfile(member, tin.extractfile(member))
        assert path.read_bytes() == again.getvalue()


def test_missing_input_folder_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "diffdenoise.shard", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope'}: input folder not found" in proc.stderr


def check_stopped_then_rerun(out, args):
    """A run stopped midway left no manifest and only complete tars; rerunning the same
    command gives the shards of a run never stopped, and no spool or temp file."""
    assert not (out / "manifest.json").exists() and not (out / ".spool").exists()
    for tar_path in out.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            assert tar.getmembers()
    assert run(*args) == 0
    run(args[0], "--name", "ref", "--out", out.parent, "--shard-mb", "0.05")
    assert shard_bytes(out) == shard_bytes(out.parent / "ref")
    assert not list(out.glob(".*.tmp")) and not (out / ".spool").exists()


def test_interrupted_run_leaves_nothing_complete_looking_and_rerun_finishes(tmp_path, monkeypatch):
    src = make_corpus(tmp_path / "gt", n=8)
    args = (src, "--name", "c", "--out", tmp_path / "s", "--shard-mb", "0.05")
    calls = {"n": 0}
    real = shard.process

    def crash_after_five(job):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run
        return real(job)

    monkeypatch.setattr(shard, "process", crash_after_five)
    assert run(*args) == 130  # one line, not a traceback
    monkeypatch.setattr(shard, "process", real)
    check_stopped_then_rerun(tmp_path / "s" / "c", args)


def test_paired_mode(tmp_path):
    clean = make_corpus(tmp_path / "gt", n=3)
    noisy = tmp_path / "gl"
    rng = np.random.default_rng(0)
    for i, path in enumerate(sorted(clean.rglob("*.wav"))):
        rel = path.relative_to(clean)
        data, rate = sf.read(str(path), dtype="float32")
        noisy_data = data + 0.05 * rng.standard_normal(data.shape).astype(np.float32)
        if i == 2:
            noisy_data = noisy_data[:-100]  # a mismatched pair
        name = f"noisy_{rel.name}" if i == 0 else rel.name  # both naming conventions
        (noisy / rel.parent).mkdir(parents=True, exist_ok=True)
        sf.write(str(noisy / rel.parent / name), noisy_data, rate)
    assert (
        run(
            clean,
            "--noisy-dir",
            noisy,
            "--name",
            "p",
            "--out",
            tmp_path / "s",
            "--val-fraction",
            "0",
        )
        == 0
    )
    m = json.loads((tmp_path / "s" / "p" / "manifest.json").read_text())
    assert m["kind"] == "paired" and m["splits"]["train"]["samples"] == 2
    assert len(m["skipped"]) == 1 and "pair mismatch" in m["skipped"][0]["reason"]
    with tarfile.open(tmp_path / "s" / "p" / "train-000000.tar") as tar:
        names = tar.getnames()
    assert sum(n.endswith(".noisy.flac") for n in names) == 2


def test_parts_then_merge_equal_whole(tmp_path):
    src = make_corpus(tmp_path / "gt", n=7)
    out = tmp_path / "s"
    for i in range(3):
        run(src, "--name", "big", "--out", out, "--part", f"{i}/3", "--val-fraction", "0.3")
    assert shard.main(["merge", str(out / "big")]) == 0
    run(src, "--name", "whole", "--out", out, "--val-fraction", "0.3")
    merged = json.loads((out / "big" / "manifest.json").read_text())
    whole = json.loads((out / "whole" / "manifest.json").read_text())
    for split in ("train", "val"):
        assert merged["splits"][split]["samples"] == whole["splits"][split]["samples"]
        assert merged["splits"][split]["seconds"] == pytest.approx(
            whole["splits"][split]["seconds"]
        )
    assert merged["files"] == whole["files"] == 7
    assert len(list((out / "big").glob("train-p*.tar"))) == 3


def test_a_part_leaves_other_parts_files_alone(tmp_path):
    """Array tasks share one folder: a part that finishes first must not touch the others'."""
    src = make_corpus(tmp_path / "gt", n=4)
    out = tmp_path / "s" / "big"
    out.mkdir(parents=True)
    writing = out / ".train-p00001-000000.tar.tmp"  # part 1 is still writing this
    writing.write_bytes(b"half a tar")
    stale_own = out / ".train-p00000-000007.tar.tmp"  # left by an interrupted part 0
    stale_own.write_bytes(b"junk")
    run(src, "--name", "big", "--out", tmp_path / "s", "--part", "0/2")
    assert writing.read_bytes() == b"half a tar"
    assert not stale_own.exists()


def test_merge_with_missing_part_is_an_error(tmp_path, capsys):
    src = make_corpus(tmp_path / "gt", n=4)
    run(src, "--name", "big", "--out", tmp_path / "s", "--part", "0/2")
    assert shard.main(["merge", str(tmp_path / "s" / "big")]) == 2
    assert "found 1 of 2 part manifests" in capsys.readouterr().err


def test_split_is_deterministic():
    assert shard.split_of("a/b.wav", 0.5) == shard.split_of("a/b.wav", 0.5)
    frac = np.mean([shard.split_of(f"f{i}.wav", 0.2) == "val" for i in range(2000)])
    assert 0.17 < frac < 0.23


def test_demo_data_is_deterministic(tmp_path):
    from diffdenoise.bench import demo_data

    a = demo_data.generate(tmp_path / "a", 0.1, seed=3)
    b = demo_data.generate(tmp_path / "b", 0.1, seed=3, workers=2)  # same bytes in parallel
    c = demo_data.generate(tmp_path / "c", 0.1, seed=4)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    data, rate = sf.read(str(a[0]))
    assert rate == 16000 and 0.05 < np.abs(data).max() < 1.0


def test_nan_audio_is_skipped_and_the_good_files_are_packed(tmp_path, capsys):
    src = make_corpus(tmp_path / "gt", n=3)
    bad = np.full(16000, 0.1, np.float32)
    bad[4000] = np.nan
    sf.write(str(src / "nan.wav"), bad, 16000, subtype="FLOAT")
    bad[4000] = np.inf
    sf.write(str(src / "inf.wav"), bad, 16000, subtype="FLOAT")
    assert run(src, "--name", "n", "--out", tmp_path / "s", "--val-fraction", "0") == 0
    m = json.loads((tmp_path / "s" / "n" / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons["nan.wav"] == reasons["inf.wav"] == "holds NaN or Inf samples"
    assert m["splits"]["train"]["samples"] == 3
    assert f"skipped {src / 'nan.wav'}: holds NaN or Inf samples" in capsys.readouterr().err


def test_symlinked_folders_are_followed_and_loops_listed(tmp_path):
    src = make_corpus(tmp_path / "gt", n=2)
    elsewhere = make_corpus(tmp_path / "more", n=2)
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    (src / "d0" / "loop").symlink_to(src, target_is_directory=True)
    files, skipped = audio.walk(src)
    assert [f for f in files if f.startswith("linked/")] == [
        "linked/d0/utt0.wav",
        "linked/d1/utt1.wav",
    ]
    assert {"path": "d0/loop", "reason": "symlinked folder already walked (loop)"} in skipped
    assert len(files) == 4


def test_verify_checks_every_size_and_hash(tmp_path, capsys):
    src = make_corpus(tmp_path / "gt", n=8, seconds=3)
    out = tmp_path / "s" / "v"
    assert run(src, "--name", "v", "--out", tmp_path / "s", "--shard-mb", "0.1") == 0
    tars = sorted(out.glob("*.tar"))
    assert len(tars) >= 3
    assert shard.main(["verify", str(out)]) == 0
    assert f"{out}: {len(tars)} of {len(tars)} shards intact" in capsys.readouterr().out
    raw = bytearray(tars[0].read_bytes())
    raw[600] ^= 0xFF  # same size: only the hash can tell
    tars[0].write_bytes(bytes(raw))
    tars[1].write_bytes(tars[1].read_bytes()[:-512])
    tars[2].unlink()
    assert shard.main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"{tars[0]}: sha256 differs from the manifest" in captured.err
    assert f"{tars[1]}: {tars[1].stat().st_size} bytes, the manifest says" in captured.err
    assert f"{tars[2]}: missing" in captured.err
    assert f"{len(tars) - 3} of {len(tars)} shards intact" in captured.out
    assert shard.main(["verify", str(tmp_path)]) == 2
    assert "manifest missing; nothing to verify" in capsys.readouterr().err


def train_refusal(tmp_path, capsys) -> str:
    """Train the tiny config on ``tmp_path/s/c``; it must refuse: its one error line."""
    from diffdenoise.training import loop as train

    args = [
        "configs/tiny.yaml",
        f"data.train_shards={tmp_path}/s/c/train-*.tar",
        f"data.val_shards={tmp_path}/s/c/val-*.tar",
        f"train.runs_dir={tmp_path}/runs",
    ]
    assert train.main(args) == 2
    return capsys.readouterr().err.strip()


def test_training_refuses_a_shard_whose_size_changed(tmp_path, capsys):
    src = make_corpus(tmp_path / "gt", n=6)
    assert run(src, "--name", "c", "--out", tmp_path / "s", "--val-fraction", "0.3") == 0
    tar = sorted((tmp_path / "s" / "c").glob("train-*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[:-1024])
    capsys.readouterr()
    err = train_refusal(tmp_path, capsys)
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {tar}: ")
    assert "changed after sharding" in err and "diffdenoise.shard verify" in err


def test_audio_near_full_scale_is_scaled_and_its_gain_recorded(tmp_path):
    # A peak above 0.99 (or a resampling overshoot) is scaled down; its gain, a numpy
    # float32 before the fix, must still be written into the sample's json record.
    src = tmp_path / "gt"
    src.mkdir()
    loud = np.sin(np.linspace(0, 400 * np.pi, 16000)).astype(np.float32)
    sf.write(str(src / "loud.wav"), loud, 16000, subtype="FLOAT")
    assert run(src, "--name", "l", "--out", tmp_path / "s", "--val-fraction", "0") == 0
    with tarfile.open(tmp_path / "s" / "l" / "train-000000.tar") as tar:
        meta = next(json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json"))
    assert meta["gain"] == pytest.approx(0.99 / float(np.abs(loud).max()))


def clean_members(folder) -> dict[str, np.ndarray]:
    """Every sample's clean audio in a shard folder, decoded by the loader's own reader."""
    out = {}
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if ext in audio.MEMBER_EXTENSIONS:
                    out[key] = audio.decode(tar.extractfile(m).read())[0]
    return out


def test_pcm16_and_flac_shards_hold_the_same_audio_within_one_lsb(tmp_path):
    src = make_corpus(tmp_path / "gt", n=4)
    for fmt in ("flac", "pcm16"):
        args = ["--name", fmt, "--out", tmp_path / "s", "--val-fraction", "0", "--format", fmt]
        assert run(src, *args) == 0
    flac, pcm = clean_members(tmp_path / "s" / "flac"), clean_members(tmp_path / "s" / "pcm16")
    assert flac.keys() == pcm.keys() and len(flac) >= 4
    for key in flac:
        assert flac[key].shape == pcm[key].shape
        assert np.abs(flac[key] - pcm[key]).max() <= 1 / 32768
    manifest = json.loads((tmp_path / "s" / "pcm16" / "manifest.json").read_text())
    assert manifest["format"] == "pcm16"
    with tarfile.open(tmp_path / "s" / "flac" / "train-000000.tar") as tar:
        member = next(tar.extractfile(m).read() for m in tar if m.name.endswith(".flac"))
    assert member[42] & 0x7F == flacseek.SEEKTABLE  # crops seek in one step (flacseek)


def test_training_refuses_shards_of_a_format_it_cannot_read(tmp_path, capsys):
    src = make_corpus(tmp_path / "gt", n=6)
    assert run(src, "--name", "c", "--out", tmp_path / "s", "--val-fraction", "0.3") == 0
    manifest = tmp_path / "s" / "c" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "format": "mp3"}))
    capsys.readouterr()
    err = train_refusal(tmp_path, capsys)
    assert err == (
        f"error: {manifest}: format: shards of format 'mp3', which the loader cannot read; "
        "reshard with --format flac or pcm16 or wav"
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_a_killed_worker_is_a_clear_error_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    src = make_corpus(tmp_path / "gt", n=8)
    args = (src, "--name", "k", "--out", tmp_path / "s", "--shard-mb", "0.05", "--workers", "2")
    real = shard.process
    victim = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.wav"))[5]

    def killed_on_one_file(job):  # runs in the forked worker: the process really dies
        if job[0] == victim:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer sends
        return real(job)

    monkeypatch.setattr(shard, "process", killed_on_one_file)
    assert run(*args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress status
    assert last.startswith(f"error: {src}: a sharding worker died (killed")
    monkeypatch.setattr(shard, "process", real)
    check_stopped_then_rerun(tmp_path / "s" / "k", args)


def _set(m: dict, dotted: str, value) -> dict:
    """``m`` with the field at ``dotted`` (``splits.train.shards.0.file``) set to ``value``."""
    node, *path, last = [m, *dotted.split(".")]
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return m


BAD_MANIFESTS = {
    "samples not a number": ("splits.train.samples", "abc", "splits.train.samples: 'abc', but"),
    "negative shard count": ("splits.train.shards.0.samples", -3, "shards[0].samples: -3 is not"),
    "zero shard count": ("splits.train.shards.0.samples", 0, "shards[0].samples: 0 is not"),
    "absurd count": ("splits.train.shards.0.samples", 10**12, "is not a whole number from 1"),
    "outside the folder": ("splits.train.shards.0.file", "../x.tar", "points outside"),
    "absolute path": ("splits.val.shards.0.file", "/etc/hostname", "is not a .tar file name"),
    "absolute tar": ("splits.val.shards.0.file", "/etc/x.tar", "points outside"),
    "rate a string": ("sample_rate", "16k", "sample_rate: '16k' is not a whole number"),
}


@pytest.fixture
def sharded(tmp_path):
    src = make_corpus(tmp_path / "gt", n=6)
    assert run(src, "--name", "c", "--out", tmp_path / "s", "--val-fraction", "0.3") == 0
    return tmp_path / "s" / "c" / "manifest.json"


@pytest.mark.parametrize("case", [*BAD_MANIFESTS, "not JSON", "a JSON list", "listed twice"])
def test_a_malformed_manifest_is_one_line_for_training_and_verify(sharded, tmp_path, capsys, case):
    m = json.loads(sharded.read_text())
    if case == "not JSON":
        text, message = "{not json", "not valid JSON"
    elif case == "a JSON list":
        text, message = "[1, 2]", "top level: a JSON list, not an object"
    elif case == "listed twice":
        m["splits"]["val"]["shards"].append(m["splits"]["train"]["shards"][0])
        m["splits"]["val"]["samples"] += m["splits"]["train"]["shards"][0]["samples"]
        text, message = json.dumps(m), "is listed twice"
    else:
        field, value, message = BAD_MANIFESTS[case]
        text = json.dumps(_set(m, field, value))
    sharded.write_text(text)
    capsys.readouterr()
    err = train_refusal(tmp_path, capsys)
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {sharded}: ") and message in err
    assert shard.main(["verify", str(sharded.parent)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {sharded}: ") and message in line


@pytest.mark.parametrize("case", ["part 1/abc", "a shard in two parts", "samples abc"])
def test_merge_refuses_bad_part_manifests_and_writes_nothing(tmp_path, capsys, case):
    src = make_corpus(tmp_path / "gt", n=6)
    out = tmp_path / "s" / "big"
    for i in range(2):
        run(src, "--name", "big", "--out", tmp_path / "s", "--part", f"{i}/2")
    second = out / "manifest.part-00001-of-00002.json"
    m = json.loads(second.read_text())
    first = json.loads((out / "manifest.part-00000-of-00002.json").read_text())
    if case == "part 1/abc":
        m["part"], message = "1/abc", f"{second}: part: '1/abc' is not I/N"
    elif case == "a shard in two parts":
        m["splits"]["train"] = first["splits"]["train"]
        message = "is listed twice (in the part manifests; nothing was written)"
    else:
        m["splits"]["train"]["samples"], message = "abc", f"{second}: splits.train.samples: 'abc'"
    second.write_text(json.dumps(m))
    capsys.readouterr()
    assert shard.main(["merge", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (out / "manifest.json").exists()


def test_a_folder_with_no_usable_audio_is_an_error_naming_what_was_skipped(tmp_path, capsys):
    src = tmp_path / "gt"
    src.mkdir()
    (src / "notes.txt").write_text("not audio")
    (src / "empty.wav").write_bytes(b"")
    sf.write(str(src / "short.wav"), np.full(100, 0.1, np.float32), 16000)
    assert run(src, "--name", "n", "--out", tmp_path / "s") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {src}: no usable audio, so no manifest was written: ")
    assert "2 audio file(s) found; skipped 3: " in line
    assert "1 x not an audio file extension" in line and "1 x shorter than --min-seconds" in line
    assert not (tmp_path / "s" / "n" / "manifest.json").exists()


def test_a_read_only_output_folder_is_one_line(tmp_path, capsys, read_only_dir):
    src = make_corpus(tmp_path / "gt", n=2)
    assert run(src, "--name", "c", "--out", read_only_dir) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    reason = "read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert line.startswith(f"error: {read_only_dir / 'c'}: {reason}; ")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_is_one_line_and_the_finished_shards_stay(
    tmp_path, capsys, small_disk, workers
):
    src = make_corpus(tmp_path / "gt", n=8, seconds=3)  # about 300 kB of FLAC shards
    disk = small_disk(256 if workers == 1 else 320)  # spools of two workers take more
    args = (src, "--name", "c", "--out", disk, "--shard-mb", "0.04", "--workers", workers)
    assert run(*args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"error: {disk / 'c'}: no space left on the device; the shards ")
    assert "Traceback" not in capsys.readouterr().err
    finished = sorted((disk / "c").glob("*.tar"))
    assert finished and not (disk / "c" / "manifest.json").exists()
    for tar in finished:  # each one whole: tarfile reads every member
        with tarfile.open(tar) as t:
            assert all(t.extractfile(m).read() is not None for m in t.getmembers())
    assert not list((disk / "c").glob(".*"))  # no temp shards or spool files left
