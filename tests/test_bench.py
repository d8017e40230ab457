"""The benchmark and quality harnesses: what they compare is what they claim to compare.

No timing is asserted here (the machines are shared); ``make bench`` prints the figures.
"""

import json

import numpy as np
import torch

from diffdenoise import bench, config, quality
from diffdenoise.denoiser import Denoiser
from diffdenoise.model import build_model


def test_sequential_baseline_is_the_seed_mode():
    cfg = config.load(["configs/tiny.yaml"], ["model.output=direct"])
    model = build_model(cfg.model).eval()
    x = np.random.default_rng(0).standard_normal(16000 * 2 + 300).astype(np.float32)
    seed = Denoiser(model, 16000, mode="seed")(x, 16000)
    np.testing.assert_allclose(bench.sequential_seed_loop(model, x, 16000), seed, atol=1e-5)


def test_bench_cli_writes_results(tmp_path):
    out = tmp_path / "results.json"
    assert bench.main(["--only", "B6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["figure"] for r in report["rows"]]
    rates = {"default": 48000, "seed": 48000, "tiny": 16000}
    assert names == [f"model cost: {c}.yaml ({r} Hz)" for c, r in rates.items()]
    default = report["rows"][0]
    assert default["params_m"] == 1.44 and default["rtf"] > 0
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"] == torch.__version__


def test_long_file_is_written_in_blocks(tmp_path):
    import soundfile as sf

    bench.write_long_file(tmp_path / "a.wav", 25, rate=8000)
    info = sf.info(str(tmp_path / "a.wav"))
    assert info.frames == 25 * 8000 and info.subtype == "PCM_16"


def summary_with(default_delta, seed_delta, wiener_out, default_out):
    buckets = {}
    for snr, w, d in zip(("0 dB", "15 dB"), wiener_out, default_out):
        noisy = float(snr.split()[0])
        buckets[snr] = {
            "noisy": {"si_sdr": noisy},
            "wiener": {"si_sdr": w},
            "default": {"si_sdr": d},
        }
    buckets["all"] = {
        "default": {"si_sdr_delta": default_delta},
        "seed": {"si_sdr_delta": seed_delta},
    }
    return buckets


def test_quality_verdicts_follow_the_targets():
    good = quality.verdicts(summary_with(6.0, 2.5, (4, 20), (8, 21)), {"default": 30.0})
    assert [ok for *_, ok in good] == [True, True, True, True]
    bad = quality.verdicts(summary_with(5.0, 2.5, (4, 20), (8, 14)), {"default": 20.0})
    assert [ok for *_, ok in bad] == [False, False, False, False]
    assert bad[1][1] == "0 dB: +4.00, 15 dB: -6.00"


def test_gpu_figures_say_clearly_when_there_is_no_gpu(tmp_path):
    import pytest

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: bench --gpu would run for real")
    with pytest.raises(SystemExit, match="--gpu needs a CUDA GPU; none is visible here"):
        bench.main(["--gpu", "--out", str(tmp_path / "g.json")])
    assert not (tmp_path / "g.json").exists()
