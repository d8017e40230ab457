"""Do no harm: the default recipe, trained briefly on speech-like audio, leaves clean
speech clean. A quality regression that nothing else would notice fails here."""

import numpy as np
import pytest

from diffdenoise.bench import demo_data
from diffdenoise.inference.denoiser import Denoiser
from diffdenoise.models.metrics import si_sdr
from tests.distributed import python_run
from tests.helpers import make_shards

pytestmark = pytest.mark.slow


def test_default_recipe_leaves_clean_speech_clean(tmp_path):
    shards = make_shards(tmp_path, n=12, extra=["--max-seconds", "2"])
    python_run(
        [
            "launch/train.py",
            "configs/default.yaml",
            "data.sample_rate=16000",
            "data.segment=16000",
            f"data.train_shards={shards}/train-*.tar",
            f"data.val_shards={shards}/val-*.tar",
            "data.num_workers=1",
            "train.batch_size=8",
            "train.max_epochs=0",
            "train.max_steps=120",
            "train.val_every=60",
            "train.mixed_precision=no",
            "checkpoint.every=1000",
            "log.wandb_mode=disabled",
            f"train.runs_dir={tmp_path / 'runs'}",
            "train.run_name=default",
        ]
    )
    denoiser = Denoiser.from_checkpoint(tmp_path / "runs" / "default" / "best.pt", device="cpu")
    rng = np.random.default_rng(123)
    for _ in range(3):
        clean = demo_data.utterance(rng, 3.0, 16000).astype(np.float32)
        assert float(si_sdr(denoiser(clean, 16000), clean)) >= 20.0
