import re

from diffdenoise.bench import steptime
from tests.helpers import make_shards


def test_steptime_times_loader_step_and_mixing_of_a_real_run(tmp_path, capsys):
    shards = make_shards(tmp_path, n=6)
    args = ["configs/tiny.yaml", f"data.train_shards={shards}/train-*.tar",
            f"data.val_shards={shards}/val-*.tar", "data.num_workers=1",
            "train.batch_size=2"]  # fmt: skip
    assert steptime.main(args) == 0
    out = capsys.readouterr().out
    assert "Self CPU time total" in out  # the profiler's table of the timed steps
    rows = re.findall(r"^(loader alone, workers: 1|step alone.*?|device-side mixing alone) +"
                      r"([\d.]+) ms/batch +([\d.]+) audio-s/s$", out, re.M)  # fmt: skip
    assert [r[0].split(",")[0].split(" (")[0] for r in rows] == [
        "loader alone", "step alone", "device-side mixing alone"]  # fmt: skip
    for _, ms, rate in rows:  # tiny.yaml: batches of two 0.5 s crops at 16 kHz: 1 audio-s
        ms, rate = float(ms), float(rate)
        printed_rounding = 0.005 / ms + 0.05 * ms / 1e3  # both figures are printed rounded
        assert ms > 0 and abs(rate * ms / 1e3 - 1.0) < printed_rounding + 1e-3
    assert re.search(r"^on cpu: (loader|step)-bound: ", out, re.M)


def test_steptime_names_missing_shards_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nope" / "train-*.tar"
    assert steptime.main(["configs/tiny.yaml", f"data.train_shards={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {missing}: no shard matches this path or glob"
