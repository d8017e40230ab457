"""The data pipeline in a real 2-process Accelerate run on CPU (gloo), with 2 workers each."""

import json

import pytest

from tests.distributed import accelerate_launch, python_run
from tests.helpers import make_shards

pytestmark = pytest.mark.slow
SCRIPT = "tests/dist/data_check.py"


def run_check(shards, out, processes, workers=2):
    args = [SCRIPT, str(shards), str(out), str(workers)]
    if processes == 1:
        python_run(args)
    else:
        accelerate_launch(args, processes=processes)
    return json.loads(out.read_text())


def shards_of_count(tmp_path, count: int):
    """A ``count``-file corpus cut into exactly ``count`` train shards. Shards are cut by
    bytes, and the encoded bytes move with the format (FLAC seek tables added 40 bytes a
    sample and turned 4 shards into 5 at 0.03 MB), so try a few sizes."""
    extra = ["--val-fraction", "0", "--max-seconds", "0.5"]
    for i, mb in enumerate((0.035, 0.03, 0.04, 0.032, 0.045, 0.028)):
        shards = make_shards(tmp_path / f"try{i}", n=count, shard_mb=mb, extra=extra)
        if len(list(shards.glob("train-*.tar"))) == count:
            return shards
    pytest.fail(f"no shard size cut the {count}-file corpus into {count} shards")


@pytest.mark.parametrize("n_files", [4, 3], ids=["4-shards", "3-shards"])
def test_two_ranks_two_workers(tmp_path, n_files):
    shards = shards_of_count(tmp_path, n_files)
    n_shards = len(list(shards.glob("train-*.tar")))
    assert n_shards == n_files
    res = run_check(shards, tmp_path / "out.json", processes=2)
    assert res["world"] == 2 and [r["rank"] for r in res["ranks"]] == [0, 1]
    counts = [len(r["batches"]) for r in res["ranks"]]
    assert counts == [res["expected"]] * 2  # identical on every rank: DDP cannot hang
    keys = [{k for b in r["batches"] for k in b["keys"]} for r in res["ranks"]]
    assert keys[0] != keys[1]  # ranks see different data
    # DataLoader batch j comes from worker j % 2: collect the shards each slot read
    slots = [
        {u for j, b in enumerate(r["batches"]) if j % 2 == w for u in b["urls"]}
        for r in res["ranks"]
        for w in (0, 1)
    ]
    if n_shards >= 4:  # enough shards: the epoch's assignment is a partition
        assert all(slots[i].isdisjoint(slots[j]) for i in range(4) for j in range(i + 1, 4))
    else:
        assert all(slots)  # fewer shards than slots: shards are shared, nobody starves


def test_validation_total_is_identical_for_one_and_two_ranks(tmp_path):
    shards = make_shards(tmp_path, n=6, extra=["--val-fraction", "0.5"])
    one = run_check(shards, tmp_path / "one.json", processes=1, workers=0)
    two = run_check(shards, tmp_path / "two.json", processes=2, workers=0)
    assert one["world"] == 1 and two["world"] == 2
    assert one["val_total"][1] == two["val_total"][1] >= 3  # every sample exactly once
    assert two["val_total"][0] == pytest.approx(one["val_total"][0], rel=1e-6)
