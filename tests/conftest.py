import os

import pytest
import torch

# Two cores are shared between tests and their subprocesses; keep each process lean.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """A real tiny checkpoint: 16 kHz shards on disk, 250 CPU training steps (~20 s)."""
    from tests.distributed import python_run
    from tests.helpers import make_shards

    tmp = tmp_path_factory.mktemp("trained")
    shards = make_shards(tmp, n=12, extra=["--max-seconds", "2"])
    python_run(
        [
            "launch/train.py",
            "configs/tiny.yaml",
            f"data.train_shards={shards}/train-*.tar",
            f"data.val_shards={shards}/val-*.tar",
            f"train.runs_dir={tmp / 'runs'}",
            "train.run_name=tiny",
            "train.max_steps=250",
            "train.val_every=125",
            "checkpoint.every=1000",
            "log.wandb_mode=disabled",
        ]
    )
    return tmp / "runs" / "tiny" / "best.pt"


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """An untrained tiny model with random (non-identity) weights, saved as best.pt."""
    from diffdenoise.config import loading as config
    from diffdenoise.models.factory import build_model
    from diffdenoise.training.checkpoint import save_best

    cfg = config.load(["configs/tiny.yaml"], ["model.output=direct"])
    torch.manual_seed(0)
    weights = build_model(cfg.model, cfg.data.sample_rate).state_dict()
    payload = {"model": weights, "ema_model": weights, "config": config.to_plain(cfg)}
    return save_best(tmp_path_factory.mktemp("ckpt"), payload, keep_copies=1)


CAUSAL = [
    "model.family=spectral", "model.causal=true", "model.spectral.win_ms=16",
    "model.spectral.hop_ms=8", "model.spectral.hidden=16", "model.spectral.layers=1",
    "model.spectral.context_frames=1", "model.spectral.noise_window_s=0.2",
]  # fmt: skip


@pytest.fixture(scope="session")
def causal_checkpoint(tmp_path_factory):
    """A causal model trained by the real training loop for a few steps."""
    from tests.distributed import python_run
    from tests.helpers import make_shards

    tmp = tmp_path_factory.mktemp("rt")
    shards = make_shards(tmp, n=6)
    runs = tmp / "runs"
    python_run([
        "launch/train.py", "configs/tiny.yaml", f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/val-*.tar", f"train.runs_dir={runs}", "train.max_steps=4",
        "train.val_every=4", "train.batch_size=2", "data.num_workers=0",
        "log.wandb_mode=disabled", *CAUSAL,
    ])  # fmt: skip
    (best,) = runs.glob("*/best.pt")
    return best


def _mount(path, options: str) -> bool:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 512 KiB (a tmpfs; mounting needs root): writes past it fail
    with ENOSPC, as on a full disk. ``small_disk(kib)`` mounts it; unmounted at the end."""
    import subprocess

    mounted = []

    def mount(kib: int = 512):
        path = tmp_path / f"disk{len(mounted)}"
        if not _mount(path, f"size={kib}k"):
            pytest.skip("needs root to mount a small tmpfs")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write into: a read-only tmpfs as root (root ignores file modes),
    else a folder of mode 0555."""
    import subprocess

    path = tmp_path / "read-only"
    if os.geteuid() == 0:
        if not _mount(path, "ro,size=64k"):
            pytest.skip("cannot mount a read-only tmpfs")
        yield path
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    else:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
