import itertools

import pytest
import torch

from diffdenoise.training.schedule import WarmupOneCycle, build_scheduler, hold_peak


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


@pytest.mark.parametrize("new_total", [600, 1000, 1500])
def test_a_plan_redone_at_the_peak_keeps_the_ascent_and_fits_the_descent(new_total):
    """A time budget sizes its curve again at the peak: the lr neither jumps nor climbs
    again, and it still ends at the final lr on the new last step."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 1000, 0.05, 0.3, 25.0, 1000.0)
    peak = sched.lr_lambdas[0].peak_step
    lrs = []
    for step in range(new_total):
        if step == peak:
            hold_peak(sched, new_total)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(1.0) and lrs[peak] == pytest.approx(1.0)
    assert lrs[peak + 1] > 0.999  # no jump down the curve
    assert lrs[:peak] == curve(1000, lr=1.0)[:peak]  # the ascent as it ran
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))
    assert lrs[-1] == pytest.approx(1 / 25 / 1000, rel=1e-6)
    state = sched.state_dict()
    again = build_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                            1000, 0.05, 0.3, 25.0, 1000.0)  # fmt: skip
    again.load_state_dict(state)
    assert again.lr_lambdas[0].peak_at == peak and again.get_last_lr() == sched.get_last_lr()
