"""The recorded corpus builder, run on real .deb packages built here in the packages'
layout (the real ones are downloaded by ``make reccorpus``, not in tests)."""

import json
import subprocess
import zipfile

import numpy as np
import pytest
import soundfile as sf

from diffdenoise.bench import reccorpus


def tone(seconds: float, rate: int, dc: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + dc).astype(np.float32)


def deb(root, name: str, files: dict) -> None:
    """A .deb ``name`` holding ``files`` (path -> bytes or audio callable)."""
    tree = root / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    for path, write in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        write(tree / path)
    subprocess.run(["dpkg-deb", "-b", str(tree), str(root / f"{name}_1.0_all.deb")],
                   check=True, capture_output=True)  # fmt: skip


def audio(x, rate, fmt="OGG"):
    return lambda path: sf.write(path, x, rate, format=fmt)


@pytest.fixture
def debs(tmp_path):
    d = tmp_path / "debs"
    d.mkdir()
    words = {f"{reccorpus.KTUBERLING}/en/w{i}.ogg": audio(tone(0.8, 44100, dc=0.2), 44100)
             for i in range(9)}  # fmt: skip
    words |= {f"{reccorpus.KTUBERLING}/da/w{i}.wav": audio(tone(1.6, 8000), 8000, "WAV")
              for i in range(2)}  # fmt: skip
    words[f"{reccorpus.KTUBERLING}/en/broken.ogg"] = lambda p: p.write_bytes(b"not audio")
    deb(d, "ktuberling-data", words)
    letters = {f"{reccorpus.KLETTRES}/{lang}/alpha/{c}.ogg": audio(tone(1.0, 22050), 22050)
               for lang in ("de", "en", "pt_BR") for c in "abc"}  # fmt: skip
    letters[f"{reccorpus.KLETTRES}/de/sounds.xml"] = lambda p: p.write_text("<sounds/>")
    deb(d, "klettres-data", letters)
    hw = reccorpus.HEDGEWARS
    deb(d, "hedgewars-data", {
        f"{hw}/Music/a.ogg": audio(tone(2.0, 44100), 44100),
        f"{hw}/Music/b.ogg": audio(tone(1.0, 22050), 22050),
        f"{hw}/Sounds/shot.ogg": audio(tone(0.5, 44100), 44100),
    })  # fmt: skip

    def base_wz(path):
        with zipfile.ZipFile(path, "w") as wz:
            for name in ("audio/sfx/weapons/gun.ogg", "audio/voice/hello.ogg"):
                sf.write(member := path.parent / "m.ogg", tone(0.25, 11025), 11025)
                wz.write(member, name)

    deb(d, "warzone2100-data", {reccorpus.WARZONE: base_wz})
    cb = reccorpus.COLOBOT
    deb(d, "colobot-common-sounds", {
        f"{cb}/music/a.ogg": audio(tone(4.0, 44100), 44100),
        f"{cb}/sounds/boom.wav": audio(np.stack([tone(0.5, 22050)] * 2, 1), 22050, "WAV"),
    })  # fmt: skip
    return d


def test_builds_speech_and_noise_from_packages(debs, tmp_path, capsys):
    out = tmp_path / "corpus"
    reccorpus.main([str(out), "--debs", str(debs)])
    printed = capsys.readouterr()
    assert "broken.ogg: skipped" in printed.err
    assert "3 utterances, 0.2 min of speech, 0.1 min more for training only" in printed.out
    assert "sounds.xml" not in printed.err  # not audio: not read
    meta = json.loads((out / "speech/meta.json").read_text())
    # en: 9 words of 0.8 s -> 2 utterances of 4 words (3.2 s), the 9th left over; da: one
    # utterance of 2 words (3.2 s)
    assert [m["language"] for m in meta] == ["da", "en", "en"]
    assert [len(m["words"]) for m in meta] == [2, 4, 4]
    for m in meta:
        x, rate = sf.read(out / "speech" / m["file"])
        assert rate == 16000 and x.ndim == 1
        assert len(x) / rate == pytest.approx(m["seconds"]) and m["seconds"] >= 3.0
        assert np.abs(x).max() == pytest.approx(0.7, abs=1e-3)
        assert abs(x.mean()) < 1e-3  # the 0.2 DC offset is gone
    # KLettres' letters: German and Brazilian Portuguese (train languages), never English
    # (a test language), 3 letters of 1 s each in one utterance
    more = json.loads((out / "train-speech/meta.json").read_text())
    assert [(m["file"], len(m["words"])) for m in more] == [("00000_de.wav", 3),
                                                           ("00001_pt@BR.wav", 3)]  # fmt: skip
    music, rate = sf.read(out / "noise/music.wav")
    assert rate == 16000 and len(music) == pytest.approx(3.0 * rate, abs=2)
    sfx, _ = sf.read(out / "noise/sfx.wav")
    assert len(sfx) == pytest.approx(0.75 * rate, abs=2)  # the voice member is not noise
    # another game's music and (stereo) effects, for training only
    for name, seconds in (("music", 4.0), ("sfx", 0.5)):
        x, rate = sf.read(out / f"train-noise/{name}.wav")
        assert rate == 16000 and x.ndim == 1 and len(x) == pytest.approx(seconds * rate, abs=2)
    assert "sfx 0.0 min; training noise 0.1 min" in printed.out


def test_missing_package_is_a_one_line_error(debs, tmp_path):
    (debs / "hedgewars-data_1.0_all.deb").unlink()
    with pytest.raises(SystemExit, match=r"^error: .*debs: no hedgewars-data_\*\.deb"):
        reccorpus.main([str(tmp_path / "out"), "--debs", str(debs)])


def test_uses_no_reserved_package():
    assert not [p for p in reccorpus.PACKAGES if p.startswith(reccorpus.RESERVED)]
