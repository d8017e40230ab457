import os

import pytest
import torch

# Two cores are shared between tests and their subprocesses; keep each process lean.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
