"""``python -m diffdenoise.tune``: real shards on disk, a real spectral checkpoint."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdenoise.evaluation import tune
from diffdenoise.inference.denoiser import Denoiser
from tests.helpers import make_shards, write_speech

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    return make_shards(tmp, n=4, extra=["--val-fraction", "0.5", "--max-seconds", "1"])


def test_choose_takes_the_best_mean_and_within_a_tie_the_best_pesq():
    def summary(**scores):
        pairs = {k: {"si_sdr": v[0], "pesq": v[1]} for k, v in scores.items()}
        return {"all": {"noisy": {"si_sdr": 0.0, "pesq": 1.0}} | pairs}

    assert tune.choose(summary(**{"0/0": (5, 2), "0.5/1": (6, 1), "1/1": (5.5, 3)})) == (0.5, 1.0)
    near = {"0/0": (5.98, 2.0), "0.5/1": (6.0, 2.1), "1/1": (6.01, 1.9), "0.25/0.5": (5.9, 3)}
    assert tune.choose(summary(**near)) == (0.5, 1.0)  # 0.25/0.5: 0.11 dB behind, no tie
    # equal PESQ: the smaller share where the correction raises the gain (the riskier side)
    assert tune.choose(summary(**{"0/0.5": (6, 2), "0.25/0.25": (6, 2)})) == (0.0, 0.5)
    nan = float("nan")  # PESQ failed (too short): the smaller share, as without it
    assert tune.choose(summary(**{"0/0": (6, nan), "1/1": (6.01, nan)})) == (0.0, 0.0)


def test_tune_writes_a_tuned_copy_that_infer_applies(shards, tmp_path, capsys):
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(DATA / "premove-spectral" / "best.pt", ckpt)
    before = ckpt.read_bytes()
    args = [str(ckpt), "--shards", f"{shards}/val-*.tar", "--snr", "0,15", "--max-files", "2"]
    assert tune.main(args) == 0
    out = capsys.readouterr().out
    tuned = ckpt.with_name("best-tuned.pt")
    assert f"written {tuned}" in out and "(chosen)" in out
    assert ckpt.read_bytes() == before  # the checkpoint it tunes is never touched
    payload = torch.load(tuned, weights_only=True)
    keep, suppress = payload["tune"]["chosen"]
    assert (keep, suppress) in tune.GRID
    assert payload["config"]["model"]["spectral"]["correction_scale"] == keep
    assert payload["config"]["model"]["spectral"]["suppress_scale"] == suppress
    assert "(chosen)" in tuned.with_suffix(".md").read_text()
    # infer on the tuned copy = the original with those shares given by hand
    noisy = write_speech(tmp_path / "x.wav", 1.0, seed=3)
    import soundfile as sf

    x = sf.read(noisy, dtype="float32")[0]
    shares = {"correction_scale": keep, "suppress_scale": suppress}
    a = Denoiser.from_checkpoint(tuned, device="cpu")(x, 16000)
    b = Denoiser.from_checkpoint(ckpt, device="cpu", shares=shares)(x, 16000)
    assert np.array_equal(a, b)

    assert tune.main(args) == 2  # the output exists: one line, nothing replaced
    assert "best-tuned.pt: already exists (use --overwrite" in capsys.readouterr().err
    assert tune.main([*args, "-o", str(ckpt)]) == 2
    assert "would overwrite the checkpoint it tunes" in capsys.readouterr().err

    # Noise from tar shards (here: speech shards stand in for noise ones): another mix.
    other = tmp_path / "other.pt"
    assert tune.main([*args, "--noise-shards", f"{shards}/train-*.tar", "-o", str(other)]) == 0
    with_clips = torch.load(other, weights_only=True)["tune"]["table"]
    assert with_clips.splitlines()[2] != payload["tune"]["table"].splitlines()[2]  # noisy row


def test_tune_refuses_a_unet_and_shards_that_match_nothing(shards, tmp_path, capsys):
    unet = str(DATA / "premove-unet" / "best.pt")
    out = ["-o", str(tmp_path / "t.pt")]
    assert tune.main([unet, "--shards", f"{shards}/val-*.tar", *out]) == 2
    assert "is not a spectral model" in capsys.readouterr().err
    spectral = str(DATA / "premove-spectral" / "best.pt")
    assert tune.main([spectral, "--shards", f"{tmp_path}/none-*.tar", *out]) == 2
    assert f"--shards {tmp_path}/none-*.tar: matches no shard files" in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists()
