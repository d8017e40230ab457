"""``python -m diffdenoise.reccorpus OUT``: recorded speech and recorded noise for quality work.

The dev corpus (``make devcorpus``) is TTS speech and synthetic noise. A recipe tuned on it
can lean on what TTS sounds like: measured here, the default's learned correction beat the
Wiener filter on held-out TTS speech and lost to it on recorded speech. This corpus is what
people recorded, from Debian packages that are not among those reserved for the independent
evaluation (:data:`RESERVED`):

- ``speech/``: the words of KTuberling's 26 language packs (``ktuberling-data``: about 30
  minutes of many speakers, 8 to 48 kHz), each language's words joined into utterances of
  at least :data:`UTTERANCE_S` seconds (``NNNNN_<lang>.wav``), with ``speech/meta.json``;
  the quality tool splits them by language into train, dev and test;
- ``train-speech/``: KLettres' letters and syllables (``klettres-data``: other speakers,
  adults and children), joined the same way, only of the languages whose split is train
  (a dev or test language's voices never reach training, whoever speaks them);
- ``noise/music.wav``: Hedgewars' soundtrack (``hedgewars-data``, about 90 minutes);
- ``noise/sfx.wav``: Hedgewars' and Warzone 2100's sound effects (``warzone2100-data``):
  shots, engines, explosions, the non-stationary noise a minimum-statistics filter misses;
- ``train-noise/music.wav`` and ``train-noise/sfx.wav``: Colobot's soundtrack (about 66
  minutes) and sound effects (``colobot-common-sounds``), the same kinds of noise from
  another game, for training only (``noise/`` is test noise, never trained on).

Everything is mono, 16 kHz, 16-bit, peak 0.7. Speech loses its DC and rumble below
:data:`HIGHPASS_HZ` (amateur recordings carry both, and SI-SDR would score their removal as
lost speech). ``--debs DIR`` reads the ``.deb`` files from ``DIR`` instead of running
``apt-get download``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from diffdenoise.bench.quality_data import base_language, recorded_part

RATE = 16000
PEAK = 0.7
UTTERANCE_S = 3.0
HIGHPASS_HZ = 60.0
PACKAGES = (
    "ktuberling-data", "klettres-data", "hedgewars-data", "warzone2100-data",
    "colobot-common-sounds",
)  # fmt: skip
# The independent evaluation's packages (issue 11): never used for training or tuning.
RESERVED = (
    "asterisk-core-sounds-", "asterisk-prompt-", "fillets-ng-data", "ufoai-sound",
    "lincity-ng-data", "extremetuxracer-data", "planetblupi-music-midi", "fluid-soundfont-",
)  # fmt: skip
KTUBERLING = "usr/share/ktuberling/sounds"
KLETTRES = "usr/share/klettres"
AUDIO = (".ogg", ".oga", ".opus", ".wav", ".flac", ".mp3")  # KLettres holds XML beside them
HEDGEWARS = "usr/share/games/hedgewars/Data"
WARZONE = "usr/share/games/warzone2100/base.wz"
COLOBOT = "usr/share/games/colobot"


class CorpusError(RuntimeError):
    """A package or file the corpus cannot be built from."""


def load(source, rate: int = RATE) -> np.ndarray:
    """A file (path or file object) -> mono float32 at ``rate``."""
    x, sr = sf.read(source, always_2d=True, dtype="float32")
    mono = torch.from_numpy(x.mean(1))
    if sr != rate:
        mono = torchaudio.functional.resample(mono, sr, rate)
    return mono.numpy()


def highpassed(x: np.ndarray, rate: int = RATE) -> np.ndarray:
    """``x`` without DC and with a 4th-order high-pass at :data:`HIGHPASS_HZ`."""
    y = torch.from_numpy(x - x.mean())
    for _ in range(2):
        y = torchaudio.functional.highpass_biquad(y, rate, HIGHPASS_HZ)
    return y.numpy()


def write(path: Path, x: np.ndarray) -> float:
    """Write at peak :data:`PEAK`, 16-bit; returns seconds."""
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak == 0.0:
        raise CorpusError(f"{path.name}: the audio is silent")
    sf.write(path, (x / peak * PEAK).astype(np.float32), RATE, subtype="PCM_16")
    return len(x) / RATE


def utterances(words: list[Path], seconds: float = UTTERANCE_S):
    """Join consecutive words into utterances of at least ``seconds``; yields ``(audio,
    word names)``. A leftover shorter than that is dropped; an unreadable word is skipped
    with a one-line warning."""
    group, names = [], []
    for word in words:
        try:
            group.append(load(word))
        except (sf.LibsndfileError, RuntimeError) as e:
            print(f"warning: {word}: skipped, unreadable ({e})", file=sys.stderr)
            continue
        names.append(word.name)
        if sum(map(len, group)) >= seconds * RATE:
            yield np.concatenate(group), names
            group, names = [], []


def build_speech(root: Path, out: Path, seed: int = 1, keep=lambda language: True) -> list[dict]:
    """The language folders under ``root`` (their :data:`AUDIO` files, in subfolders too) ->
    ``out/NNNNN_<lang>.wav``, for the languages ``keep`` accepts; a region's ``_`` becomes
    ``@`` (``pt_BR`` -> ``pt@BR``: the split groups a language's variants)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    meta = []
    for lang in sorted(p for p in root.iterdir() if p.is_dir()):
        language = lang.name.replace("_", "@")
        words = sorted(p for p in lang.rglob("*") if p.suffix.lower() in AUDIO and p.is_file())
        if not keep(language) or not words:
            continue
        for audio, names in utterances([words[i] for i in rng.permutation(len(words))]):
            name = f"{len(meta):05d}_{language}.wav"
            seconds = write(out / name, highpassed(audio))
            meta.append({"file": name, "language": language, "words": names, "seconds": seconds})
    if not meta:
        raise CorpusError(f"{root}: no language folder with {UTTERANCE_S:g} s of words")
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def trained_on(language: str) -> bool:
    """Whether the quality tool's split puts ``language`` (``pt@BR``: ``pt``) in train."""
    return recorded_part(base_language(language)) == "train"


def build_noise(sources, path: Path) -> float:
    """Concatenate every readable source (paths or file objects) into one noise file."""
    parts = []
    for source in sources:
        try:
            parts.append(load(source))
        except (sf.LibsndfileError, RuntimeError) as e:
            print(f"warning: {getattr(source, 'name', source)}: skipped ({e})", file=sys.stderr)
    if not parts:
        raise CorpusError(f"{path.name}: no readable source")
    return write(path, np.concatenate(parts))


def build_train_noise(colobot: Path, out: Path) -> float:
    """Colobot's music and sound effects -> ``out/music.wav``, ``out/sfx.wav``; seconds."""
    out.mkdir(parents=True, exist_ok=True)
    music = build_noise(sorted((colobot / "music").glob("*.ogg")), out / "music.wav")
    return music + build_noise(sorted((colobot / "sounds").glob("*.wav")), out / "sfx.wav")


def warzone_sfx(base_wz: Path) -> list[io.BytesIO]:
    """The ``audio/sfx/*.ogg`` members of Warzone 2100's ``base.wz`` (a zip)."""
    with zipfile.ZipFile(base_wz) as wz:
        names = sorted(
            n for n in wz.namelist() if n.startswith("audio/sfx/") and n.endswith(".ogg")
        )
        return [io.BytesIO(wz.read(n)) for n in names]


def unpack(debs: Path, tree: Path) -> None:
    """Extract every package of :data:`PACKAGES` from ``debs`` into ``tree``."""
    for package in PACKAGES:
        if package.startswith(RESERVED):
            raise CorpusError(f"{package}: reserved for the independent evaluation")
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise CorpusError(f"{debs}: no {package}_*.deb (run without --debs to download)")
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(tree)], check=True)


def build(out: Path, debs: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if debs is None:
            debs = tmp
            subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True)
        tree = tmp / "tree"
        unpack(debs, tree)
        speech = build_speech(tree / KTUBERLING, out / "speech")
        train_speech = build_speech(tree / KLETTRES, out / "train-speech", keep=trained_on)
        (out / "noise").mkdir(parents=True, exist_ok=True)
        hedgewars = tree / HEDGEWARS
        music = build_noise(sorted((hedgewars / "Music").glob("*.ogg")), out / "noise/music.wav")
        effects = sorted((hedgewars / "Sounds").glob("*.ogg")) + warzone_sfx(tree / WARZONE)
        sfx = build_noise(effects, out / "noise/sfx.wav")
        train_noise = build_train_noise(tree / COLOBOT, out / "train-noise")
    return {"utterances": len(speech), "speech_s": sum(m["seconds"] for m in speech),
            "train_s": sum(m["seconds"] for m in train_speech), "music_s": music,
            "sfx_s": sfx, "train_noise_s": train_noise}  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m diffdenoise.reccorpus", description=__doc__)
    p.add_argument("out", type=Path, help="folder to write speech/ and noise/ into")
    p.add_argument("--debs", type=Path, help="folder holding the .deb files (default: download)")
    args = p.parse_args(argv)
    try:
        summary = build(args.out, args.debs)
    except (CorpusError, subprocess.CalledProcessError, zipfile.BadZipFile) as e:
        raise SystemExit(f"error: {e}") from None
    minutes = {key: f"{value / 60:.1f} min" for key, value in summary.items() if key.endswith("_s")}
    print(
        f"{args.out}: {summary['utterances']} utterances, {minutes['speech_s']} of speech, "
        f"{minutes['train_s']} more for training only; music {minutes['music_s']}, "
        f"sfx {minutes['sfx_s']}; training noise {minutes['train_noise_s']}"
    )


if __name__ == "__main__":
    main()
