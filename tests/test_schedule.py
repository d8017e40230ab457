import itertools

import pytest
import torch

from diffdenoise.training.schedule import WarmupOneCycle, build_scheduler


def curve(total=1000, lr=1e-3, **kw):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, total, 0.05, 0.3, 25.0, 1000.0, **kw)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_lr_curve_start_peak_and_end():
    lrs = curve()
    assert lrs[0] == 0.0  # linear warmup starts from zero
    assert lrs[25] == pytest.approx(0.5 * 1e-3 / 25)  # halfway through the 5 % warmup
    assert lrs[50] == pytest.approx(1e-3 / 25)  # OneCycle starts at max / div_factor
    peak = max(range(1000), key=lrs.__getitem__)
    assert peak == 50 + round(0.3 * 950) - 1  # 30 % of the OneCycle part
    assert lrs[peak] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1000, rel=1e-6)  # final = initial / 1000
    assert all(a <= b for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))


def test_curve_survives_state_dict_round_trip():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 100, 0.05, 0.3, 25.0, 1000.0)
    for _ in range(40):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, 100, 0.05, 0.3, 25.0, 1000.0)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert isinstance(sched2.lr_lambdas[0], WarmupOneCycle)
