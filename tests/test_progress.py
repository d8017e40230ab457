"""Progress output: a bar only on a terminal; plain status lines in logs."""

import subprocess
import sys

from diffdenoise.common.progress import StatusLines, progress
from tests.helpers import make_corpus


def test_status_lines_when_not_a_terminal(capsys):
    bar = progress(total=10, desc="scoring", unit="item", every_s=0.0)
    assert isinstance(bar, StatusLines)  # pytest's stderr is not a terminal
    with bar:
        bar.set_postfix(audio_h="0.50")
        for _ in range(3):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("scoring: 1/10 item in ") and lines[0].endswith("audio_h=0.50")
    assert lines[-1].startswith("scoring: 3/10 item") and "\r" not in "".join(lines)


def test_quiet_between_intervals_then_one_final_line(capsys):
    with progress(total=5, desc="x", every_s=3600) as bar:
        for _ in range(5):
            bar.update()
    assert capsys.readouterr().err.splitlines() == ["x: 5/5 it in 0 s"]


def test_shard_log_has_no_carriage_returns(tmp_path):
    src = make_corpus(tmp_path / "gt", n=3)
    cmd = [sys.executable, "-m", "diffdenoise.shard", str(src), "--out", str(tmp_path / "s")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "\r" not in proc.stderr and "%|" not in proc.stderr
