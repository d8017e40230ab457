"""Run under ``accelerate launch`` (or plain python for one rank) by tests/test_distributed_data.py.

Iterates one training epoch with the real DataLoader workers and computes the exact
validation loss total, then rank 0 writes what every rank saw as JSON.
"""

import glob
import json
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from diffdenoise.data import pipeline as data
from diffdenoise.models.losses import DenoiseLoss
from diffdenoise.models.unet import AudioDiffusionModel


def main(shard_dir: str, out: str, workers: int) -> None:
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    urls = data.expand_urls(f"{shard_dir}/train-*.tar")
    babble = data.NoiseBank.from_urls(urls, max_seconds=3.0)  # the same bank on every rank
    weights = {"gaussian": 1.0, "pink": 1.0, "babble": 1.0}
    mixer = data.Mixer(weights, 0, 20, 0, 0, "random", 1000, 0, modulation_prob=0.5,
                       modulation_db=20.0, babble_talkers=3, reverb_prob=0.5,
                       reverb_rt60_min=0.1, reverb_rt60_max=0.4).with_babble(babble.lengths)
    n = data.batches_per_epoch(data.manifest_stats(urls)["samples"], 2, world)
    stream = data.TrainStream(urls, segment=4000, sample_rate=16000, batch_size=2, batches=n,
                              mixer=mixer, seed=0, rank=rank, world_size=world)
    batches = [{"keys": b["keys"], "urls": b["urls"]} for b in data.train_loader(stream, workers)]

    torch.manual_seed(0)
    model = AudioDiffusionModel(depth=2, channels=4, output="direct", time_dim=8).eval()
    loss = DenoiseLoss([(256, 64, 256)])
    total = torch.zeros(2, dtype=torch.float64)
    val_urls = sorted(glob.glob(f"{shard_dir}/val-*.tar"))
    for b in data.val_batches(val_urls, segment=4000, sample_rate=16000, batch_size=3,
                              mixer=mixer, rank=rank, world_size=world, babble=babble):
        with torch.no_grad():
            y = model(b["noisy"], b["t"])
        for i in range(y.shape[0]):
            total[0] += loss(y[i : i + 1], b["clean"][i : i + 1])[0].double()
            total[1] += 1
    total = acc.reduce(total, reduction="sum")
    seen = gather_object([{"rank": rank, "world": world, "batches": batches}])
    if acc.is_main_process:
        result = {"world": world, "ranks": seen, "val_total": total.tolist(), "expected": n}
        with open(out, "w") as f:
            json.dump(result, f)
    acc.wait_for_everyone()
    acc.end_training()  # destroys the process group; gloo aborts at exit otherwise


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
