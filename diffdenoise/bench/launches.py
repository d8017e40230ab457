"""Kernel launches per training step, counted on any device, so a GPU regression shows on
a CPU: ``torch.profiler``'s leaf operators of one whole step (forward, backward, clipping,
the optimizer, EMA), less those that only make views or allocate, with each region that is
one kernel or library call on a GPU (:data:`FUSED_ON_GPU`: the Wiener recursion, a GRU)
counted once each way.
"""

from __future__ import annotations

import collections

import torch

from diffdenoise.bench.common import row
from diffdenoise.config import loading as config
from diffdenoise.models.factory import model_for
from diffdenoise.models.kernels import ONE_LAUNCH
from diffdenoise.models.losses import build_loss

# Operators that launch nothing on a GPU: views, reshapes, allocation, metadata.
NO_LAUNCH = frozenset(
    f"aten::{name}"
    for name in (
        "empty", "empty_strided", "empty_like", "view", "_unsafe_view", "as_strided", "t",
        "reshape", "expand", "expand_as", "slice", "select", "unsqueeze", "squeeze",
        "permute", "transpose", "detach", "alias", "resize_", "lift_fresh", "view_as_real",
        "view_as_complex", "_reshape_alias", "unflatten", "flatten", "split", "chunk",
        "unbind", "narrow", "movedim", "contiguous", "set_", "is_nonzero", "_local_scalar_dense",
        "result_type", "to", "_to_copy_meta", "numpy_T", "real", "imag", "conj", "resolve_conj",
        "resolve_neg", "_neg_view", "_conj", "split_with_sizes", "diagonal",
        "_has_compatible_shallow_copy_type", "cudnn_is_acceptable",
    )
)  # fmt: skip


# Work that is one kernel (or one library call) on a GPU but many operators on a CPU: the
# Wiener recursion (a Triton kernel) and recurrent layers (one cuDNN call each way).
FUSED_ON_GPU = frozenset({ONE_LAUNCH, "aten::gru", "aten::lstm", "aten::rnn_tanh"})
BACKWARD = "autograd::engine::evaluate_function"


def count_launches(events) -> tuple[int, collections.Counter]:
    """Launches among profiler ``events``: leaf ``aten::`` operators that are not
    :data:`NO_LAUNCH`, plus one for each :data:`FUSED_ON_GPU` region and one for each such
    region's backward (found by the autograd sequence numbers of its operators), whose
    operators are not counted. Returns the count and a counter by operator name."""
    regions = [e for e in events if e.name in FUSED_ON_GPU and not _inside_fused(e)]
    region_of = {}  # forward sequence number -> its region
    for index, region in enumerate(regions):
        for child in _descendants(region):
            if child.sequence_nr >= 0:
                region_of[child.sequence_nr] = index
    by_name: collections.Counter = collections.Counter(e.name for e in regions)
    skipped, backward_of = set(), set()
    for event in events:
        if event.name.startswith(BACKWARD) and event.sequence_nr in region_of:
            backward_of.add(region_of[event.sequence_nr])
            skipped |= {id(d) for d in _descendants(event)}
    by_name["fused backward"] = len(backward_of)
    for event in events:
        if id(event) in skipped or _inside_fused(event) or event.name in FUSED_ON_GPU:
            continue
        if _launches(event) and not any(_launches(d) for d in _descendants(event)):
            by_name[event.name] += 1  # the innermost operator that does work
    return sum(by_name.values()), by_name


def _launches(event) -> bool:
    return event.name.startswith("aten::") and event.name not in NO_LAUNCH


def _inside_fused(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in FUSED_ON_GPU:
            return True
        parent = parent.cpu_parent
    return False


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def step_launches(name: str, overrides: tuple[str, ...] = ()) -> dict:
    """Launches of one training step of shipped config ``name`` on this CPU, as the loop
    runs it: :func:`~diffdenoise.training.step.train_step` (forward, loss, backward,
    clipping, fused AdamW) and :func:`~diffdenoise.training.step.ema_update`."""
    from accelerate import Accelerator
    from torch_ema import ExponentialMovingAverage

    from diffdenoise.training.step import ema_update, train_step

    cfg = config.load([config.find_config(name)], ["log.wandb_mode=disabled", *overrides])
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model, loss_fn = model_for(cfg), build_loss(cfg.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model, optimizer = acc.prepare(model, optimizer)
    ema = ExponentialMovingAverage(acc.unwrap_model(model).parameters(), decay=0.999)
    clean = torch.randn(cfg.train.batch_size, 1, cfg.data.segment) * 0.1
    batch = {"clean": clean, "noisy": clean + 0.05 * torch.randn_like(clean)}
    batch["t"] = torch.zeros(cfg.train.batch_size, dtype=torch.long)

    def step():
        _, _, bad = train_step(model, loss_fn, optimizer, [batch], acc, 1.0)
        ema_update(ema, acc.unwrap_model(model).parameters(), bad)

    step()  # warm-up: lazy state (the optimizer's moments) is made here, not counted
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the count must not depend on the machine's cores
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
    finally:
        torch.set_num_threads(threads)
    total, by_name = count_launches(prof.events())
    return {"launches": total, "top": dict(by_name.most_common(8))}


# default.yaml's step on 2026-12-05, before any launch was cut (the target is a quarter of
# it). An H200 profile before the Triton kernel counted 4,175 kernels per step, about
# 3,500 of them the recursion: about 675 besides it, as this CPU count finds.
BASELINE = 672


def bench_launches() -> dict:
    """B18: launches per training step of ``default.yaml``, against a quarter of today's."""
    counted = step_launches("default")
    target = BASELINE // 4
    return row(
        "B18", "launches per training step, default.yaml (a GPU kernel or cuDNN call = 1)",
        counted["launches"], f"<= {target} (a quarter of {BASELINE})",
        counted["launches"] <= target, most=counted["top"],
    )  # fmt: skip
