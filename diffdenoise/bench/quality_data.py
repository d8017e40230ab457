"""Test and training sets for the quality loop, from any speech folder and noise folder.

Speech is split by file: a fixed share of the files (chosen by a hash of the path) is the
test set and plays no part in training. Noise is split in time: the first
``TRAIN_SHARE`` of every noise file trains, the rest tests; one noise file is held out
whole, so one row of the report is a noise the model never heard.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffdenoise.data import audio

TEST_FRACTION = 0.15
TRAIN_SHARE = 0.8
# A recorded corpus is split by language (one speaker or a few per language in make
# reccorpus): a hash of the language puts it in test, dev or train, never two of them.
# Test is only reported, dev is where settings are chosen, train joins the training speech.
RECORDED_SPLIT = (("test", 0.2), ("dev", 0.4), ("train", 1.0))
RECORDED_EVERY = 3  # every 3rd utterance of the dev and test languages is scored


@dataclass
class Recorded:
    """A recorded corpus split by language: utterance paths of each part, its noises
    (name -> ``(time,)`` at the comparison's rate; test noise, never trained on), and the
    files of its ``train-noise/`` (other recordings of those kinds, for training only)."""

    train: list[Path]
    dev: list[Path]
    test: list[Path]
    noises: dict[str, np.ndarray]
    train_noise: list[Path] = field(default_factory=list)


@dataclass
class QualityData:
    """Where the prepared quality data lives."""

    speech_shards: Path  # train/val shards of the training speech
    noise_shards: Path  # noise shards of the training part of the noise
    test_speech: list[Path]  # held-out speech files
    test_noise: dict[str, np.ndarray]  # noise name -> (time,) test noise at ``rate``
    holdout: str  # the noise type no training saw
    rate: int


def is_test(rel: str) -> bool:
    u = int(hashlib.sha1(f"quality-test/{rel}".encode()).hexdigest()[:8], 16) / 2**32
    return u < TEST_FRACTION


def split_speech(clean_dir: Path) -> tuple[list[str], list[str]]:
    """Relative paths of ``(train, test)`` speech files; at least one of each."""
    if not clean_dir.is_dir():
        raise SystemExit(f"error: {clean_dir}: speech folder not found")
    files, _ = audio.walk(clean_dir)
    if len(files) < 2:
        raise SystemExit(f"error: {clean_dir}: the quality loop needs at least 2 audio files")
    test = [f for f in files if is_test(f)] or files[-1:]
    return [f for f in files if f not in test], test


def noise_parts(noise_dir: Path, rate: int, holdout: str) -> tuple[dict, dict, str]:
    """``(train, test, holdout)``: name -> ``(time,)`` noise at ``rate`` for each part."""
    if not noise_dir.is_dir():
        raise SystemExit(f"error: {noise_dir}: noise folder not found")
    files, _ = audio.walk(noise_dir)
    if not files:
        raise SystemExit(f"error: {noise_dir}: no noise audio files")
    names = {Path(f).stem: f for f in files}
    holdout = holdout or sorted(names)[0]
    if holdout not in names:
        raise SystemExit(f"error: --holdout-noise {holdout}: not one of {', '.join(names)}")
    if len(names) < 2:
        raise SystemExit(f"error: {noise_dir}: need 2+ noise files to hold one out")
    train, test = {}, {}
    for name, rel in sorted(names.items()):
        data, orig = audio.read(noise_dir / rel)
        wave = audio.resample(audio.to_mono(data), orig, rate)
        cut = int(len(wave) * TRAIN_SHARE) if name != holdout else 0
        if name != holdout:
            train[name] = wave[:cut]
        test[name] = wave[cut:]
    return train, test, holdout


def language_of(path: Path) -> str:
    """``00012_sr@latin.wav`` -> ``sr``: make reccorpus's naming, variants of a language
    (one speaker) together; a file named otherwise is its own group."""
    stem = Path(path).stem
    return base_language(stem.rsplit("_", 1)[1]) if "_" in stem else stem


def base_language(language: str) -> str:
    """``sr@latin`` -> ``sr``: a language's variants (one speaker) split together."""
    return language.split("@")[0]


def recorded_part(language: str) -> str:
    """``test``, ``dev`` or ``train``, fixed by a hash of the language."""
    u = int(hashlib.sha1(f"reccorpus-split/{language}".encode()).hexdigest()[:8], 16) / 2**32
    return next(part for part, upper in RECORDED_SPLIT if u < upper)


def recorded_parts(folder: Path, rate: int, train_speech: bool = False) -> Recorded:
    """A recorded corpus (``make reccorpus``: ``speech/`` and ``noise/``) split by
    language (:func:`recorded_part`): all of train's utterances (with ``train_speech``,
    also those of its ``train-speech/`` in a train language), every
    :data:`RECORDED_EVERY`-th of dev's and test's, and each noise file whole at ``rate``.
    Checked before any training starts."""
    speech_dir, noise_dir = folder / "speech", folder / "noise"
    for part in (speech_dir, noise_dir):
        if not part.is_dir():
            raise SystemExit(f"error: --recorded {folder}: no {part.name}/ folder in it "
                             "(make reccorpus builds one)")  # fmt: skip
    files, noise_files = audio.walk(speech_dir)[0], audio.walk(noise_dir)[0]
    if not files or not noise_files:
        raise SystemExit(f"error: --recorded {folder}: needs audio in both speech/ and noise/")
    parts: dict[str, list[Path]] = {"train": [], "dev": [], "test": []}
    for rel in files:
        parts[recorded_part(language_of(rel))].append(speech_dir / rel)
    more = folder / "train-speech"  # other speakers, for training only (make reccorpus)
    for rel in audio.walk(more)[0] if train_speech and more.is_dir() else []:
        if recorded_part(language_of(rel)) == "train":  # no dev or test language trains
            parts["train"].append(more / rel)
    if not parts["test"] or not parts["dev"]:
        raise SystemExit(f"error: --recorded {folder}: its languages (the _<lang> of each "
                         "name) leave no test or dev part; it needs more languages")  # fmt: skip
    noises = {}
    for rel in noise_files:
        data, orig = audio.read(noise_dir / rel)
        noises[f"recorded {Path(rel).stem}"] = audio.resample(audio.to_mono(data), orig, rate)
    more_noise = folder / "train-noise"  # make reccorpus: another game's music and effects
    train_noise = (
        [more_noise / rel for rel in audio.walk(more_noise)[0]] if more_noise.is_dir() else []
    )
    every = RECORDED_EVERY
    return Recorded(parts["train"], parts["dev"][::every], parts["test"][::every], noises,
                    train_noise)  # fmt: skip


def prepare(clean_dir: Path, noise_dir: Path, work: Path, rate: int, holdout: str = "",
            recorded_train: list[Path] = (), recorded_noise: list[Path] = ()):  # fmt: skip
    """Split, write and shard the training parts under ``work`` (with ``recorded_train``
    utterances among the training speech, and the whole of each ``recorded_noise`` file
    among the training noise); reuse them when unchanged."""
    train_files, test_files = split_speech(clean_dir)
    train_noise, test_noise, holdout = noise_parts(noise_dir, rate, holdout)
    stamp = {
        "clean": str(clean_dir.resolve()),
        "noise": str(noise_dir.resolve()),
        "train": train_files,
        "recorded_train": [str(p.resolve()) for p in recorded_train],
        "recorded_noise": [str(p.resolve()) for p in recorded_noise],
        "holdout": holdout,
        "rate": rate,
    }
    speech_shards, noise_shards = work / "shards" / "speech", work / "shards" / "noise"
    stamp_file = work / "prepared.json"
    if not stamp_file.is_file() or json.loads(stamp_file.read_text()) != stamp:
        _link_files(clean_dir, train_files, work / "speech-train")
        for path in recorded_train:
            (work / "speech-train" / f"recorded__{path.name}").symlink_to(path.resolve())
        noise_dir_train = work / "noise-train"
        # Afresh: a file left from another holdout or corpus would train on test noise.
        _afresh(noise_dir_train)
        for name, wave in train_noise.items():
            audio.write(noise_dir_train / f"{name}.wav", wave, rate)
        for path in recorded_noise:  # whole: only its kind, never the file, is tested
            (noise_dir_train / f"recorded__{path.name}").symlink_to(path.resolve())
        common = ["--out", str(work / "shards"), "--sample-rate", str(rate), "--workers", "2"]
        _shard(work / "speech-train", "speech", [*common, "--val-fraction", "0.1"])
        _shard(noise_dir_train, "noise", [*common, "--kind", "noise", "--val-fraction", "0"])
        stamp_file.write_text(json.dumps(stamp))
    return QualityData(
        speech_shards,
        noise_shards,
        [clean_dir / f for f in test_files],
        test_noise,
        holdout,
        rate,
    )


def _afresh(folder: Path) -> None:
    """``folder``, empty: whatever an earlier preparation left in it is gone."""
    shutil.rmtree(folder, ignore_errors=True)  # links inside go, their targets stay
    folder.mkdir(parents=True)


def _link_files(root: Path, files: list[str], out: Path) -> None:
    _afresh(out)
    for rel in files:
        (out / rel.replace("/", "__")).symlink_to((root / rel).resolve())


def _shard(folder: Path, name: str, args: list[str]) -> None:
    shutil.rmtree(Path(args[args.index("--out") + 1]) / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "diffdenoise.shard", str(folder), "--name", name, *args]
    subprocess.run(cmd, check=True)
