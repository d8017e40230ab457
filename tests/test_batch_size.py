"""train.auto_batch: the largest batch within a memory budget (a fake one here, as a GPU
would measure it), the learning rate scaled to it, and the choice kept for a resume."""

import json

import pytest
import torch

from diffdenoise.config import loading as config
from diffdenoise.training import batch_size


def linear_peak(base: float, per_sample: float, oom_from: int | None = None):
    def peak(batch: int) -> float:
        if oom_from is not None and batch >= oom_from:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return base + per_sample * batch

    return peak


@pytest.mark.parametrize(
    "budget, oom_from, want",
    [
        (1000 + 64 * 10, None, 64),  # 128 would need 2,280
        (1000 + 8 * 10, None, 8),  # exactly the start
        (500, None, 8),  # not even the start fits: the start, as configured
        (1e12, None, batch_size.MAX_BATCH),  # capped
        (1e12, 256, 128),  # an out-of-memory error is over budget
    ],
)
def test_largest_batch_doubles_within_the_budget(budget, oom_from, want):
    assert batch_size.largest_batch(linear_peak(1000, 10, oom_from), budget, 8) == want


def test_the_sqrt_rule_scales_the_learning_rate():
    assert batch_size.sqrt_scaled_lr(1e-3, 32, 8) == pytest.approx(2e-3)
    assert batch_size.sqrt_scaled_lr(1e-3, 8, 8) == pytest.approx(1e-3)


def test_an_auto_batch_is_chosen_once_and_kept_on_resume(tmp_path):
    cfg = config.load(["configs/tiny.yaml"], ["train.auto_batch=true", "optim.lr=1e-3"])
    agreed = []

    def agree(batch: int) -> int:  # as the ranks agree on the smallest
        agreed.append(batch)
        return batch // 2

    got, note = batch_size.resolve(cfg, tmp_path, linear_peak(0, 1), 64, agree)
    assert agreed == [64] and got.train.batch_size == 32  # the tiny config starts at 8
    assert got.optim.lr == pytest.approx(1e-3 * 2)  # sqrt(32 / 8)
    assert note.startswith("train.auto_batch: batch 32 fits 80% of the GPU's memory")
    assert json.loads((tmp_path / "auto_batch.json").read_text())["batch_size"] == 32
    again, note = batch_size.resolve(cfg, tmp_path, linear_peak(0, 1), 1e9, agree)
    assert again.train.batch_size == 32 and again.optim.lr == pytest.approx(2e-3)
    assert "as this run chose it" in note and len(agreed) == 1


def test_without_a_gpu_the_configured_batch_stays_and_it_says_so(tmp_path):
    cfg = config.load(["configs/tiny.yaml"], ["train.auto_batch=true"])
    got, note = batch_size.resolve(cfg, tmp_path, None, 0)
    assert got.train.batch_size == cfg.train.batch_size
    assert note == "train.auto_batch needs a GPU; batch 8 as configured"
    assert not (tmp_path / "auto_batch.json").exists()
    off, note = batch_size.resolve(config.load(["configs/tiny.yaml"]), tmp_path, None, 0)
    assert note is None and off.train.batch_size == 8


def test_the_cuda_probe_is_none_on_a_cpu():
    cfg = config.load(["configs/tiny.yaml"])
    assert batch_size.cuda_peak_bytes(cfg, torch.device("cpu"), None) is None
