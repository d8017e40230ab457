"""Kernel launches per training step, counted on any device, so a GPU regression shows on
a CPU: ``torch.profiler``'s leaf operators of one whole step (forward, backward, clipping,
the optimizer, EMA), less what launches nothing on a GPU (views, allocation, and the input
casts a CPU element-wise operator makes, which a CUDA kernel does in registers), with each
region that is one kernel or library call on a GPU (:data:`FUSED_ON_GPU`: the Wiener
recursion, a GRU, a multi-tensor ``_foreach_``/``_fused_`` operator) counted once each way.
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
        "_has_compatible_shallow_copy_type", "cudnn_is_acceptable", "as_strided_", "new_empty",
        "broadcast_tensors", "is_same_size", "view_as", "transpose_", "squeeze_", "unsqueeze_",
        "t_",
    )
)  # fmt: skip

# Element-wise operators built on TensorIterator: on a CPU each casts an input of another
# dtype with a separate ``aten::to`` first; a CUDA kernel casts as it loads (no launch).
CASTS_INLINE_ON_GPU = frozenset(
    f"aten::{name}{suffix}"
    for name in ("add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge", "where")
    for suffix in ("", "_")
)


# Work that is one kernel (or one library call) on a GPU but many operators on a CPU: the
# Wiener recursion (a Triton kernel), recurrent layers (one cuDNN call each way), and the
# multi-tensor operators of clipping, AdamW and the EMA (one launch for up to ~100 tensors;
# a CPU loops over the tensors).
FUSED_ON_GPU = frozenset({ONE_LAUNCH, "aten::gru", "aten::lstm", "aten::rnn_tanh"})
MULTI_TENSOR = ("aten::_foreach_", "aten::_fused_")
BACKWARD = "autograd::engine::evaluate_function"


def count_launches(events) -> tuple[int, collections.Counter]:
    """Launches among profiler ``events``: leaf ``aten::`` operators that are not
    :data:`NO_LAUNCH`, plus one for each :data:`FUSED_ON_GPU` region and one for each such
    region's backward (found by the autograd sequence numbers of its operators), whose
    operators are not counted. Returns the count and a counter by operator name."""
    regions = [e for e in events if _fused(e.name) and not _inside_fused(e)]
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
        if id(event) in skipped or _inside_fused(event) or _fused(event.name):
            continue
        if _launches(event) and not any(_launches(d) for d in _descendants(event)):
            by_name[event.name] += 1  # the innermost operator that does work
    return sum(by_name.values()), by_name


def _launches(event) -> bool:
    if not event.name.startswith("aten::") or event.name in NO_LAUNCH:
        return False
    return not _inline_cast(event)


def _fused(name: str) -> bool:
    return name in FUSED_ON_GPU or name.startswith(MULTI_TENSOR)


def _inline_cast(event) -> bool:
    """True for ``aten::to`` (and the copy under it) called by an element-wise operator."""
    while event is not None and event.name in ("aten::copy_", "aten::_to_copy"):
        event = event.cpu_parent
    if event is None or event.name != "aten::to":
        return False
    return event.cpu_parent is not None and event.cpu_parent.name in CASTS_INLINE_ON_GPU


def _inside_fused(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _fused(parent.name):
            return True
        parent = parent.cpu_parent
    return False


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def step_launches(name: str, overrides: tuple[str, ...] = (), device: str = "cpu",
                  compiled: bool = False) -> dict:  # fmt: skip
    """Launches of one training step of shipped config ``name``, as the loop runs it:
    :func:`~diffdenoise.training.step.train_step` (forward, loss, backward, clipping, fused
    AdamW) and :func:`~diffdenoise.training.step.ema_update`. On the CPU, by
    :func:`count_launches`; on a GPU (``device="cuda"``, bf16, maybe ``compiled``), the
    kernels, copies and fills the CUDA profiler saw."""
    step = _training_step(name, overrides, device, compiled)
    for _ in range(3 if compiled else 1):  # lazy state and compilation are not counted
        step()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the count must not depend on the machine's cores
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        with torch.profiler.profile(activities=activities) as prof:
            step()
            if device == "cuda":
                torch.cuda.synchronize()
    finally:
        torch.set_num_threads(threads)
    if device == "cuda":
        on_gpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        by_name = collections.Counter(e.name[:60] for e in on_gpu)
        return {"launches": len(on_gpu), "top": dict(by_name.most_common(8))}
    total, by_name = count_launches(prof.events())
    return {"launches": total, "top": dict(by_name.most_common(8))}


def _training_step(name: str, overrides, device: str, compiled: bool):
    """A closure running one full training step of config ``name`` on fixed data."""
    from accelerate import Accelerator
    from torch_ema import ExponentialMovingAverage

    from diffdenoise.training.step import ema_update, train_step

    cfg = config.load([config.find_config(name)], ["log.wandb_mode=disabled", *overrides])
    torch.manual_seed(0)
    on_cpu = device == "cpu"
    acc = Accelerator(cpu=on_cpu, mixed_precision="no" if on_cpu else "bf16")
    model, loss_fn = model_for(cfg), build_loss(cfg.loss).to(acc.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model, optimizer = acc.prepare(model, optimizer)
    ema = ExponentialMovingAverage(acc.unwrap_model(model).parameters(), decay=0.999)
    if compiled:
        model = torch.compile(model)  # as training.builders does with train.compile
    clean = torch.randn(cfg.train.batch_size, 1, cfg.data.segment, device=acc.device) * 0.1
    batch = {"clean": clean, "noisy": clean + 0.05 * torch.randn_like(clean)}
    batch["t"] = torch.zeros(cfg.train.batch_size, dtype=torch.long, device=acc.device)

    def step():
        _, _, bad = train_step(model, loss_fn, optimizer, [batch], acc, 1.0)
        ema_update(ema, acc.unwrap_model(model).parameters(), bad)

    return step


# default.yaml's step at f7ae3f0 (2026-12-05), before any launch was cut, by this counter
# (the target is a quarter of it). The first count, 672, also counted what launches
# nothing on a GPU: a CPU's per-tensor loops inside the multi-tensor operators, its input
# casts, and in-place view operators. An H200 profile before the Triton kernel counted
# 4,175 kernels per step, about 3,500 of them the recursion.
BASELINE = 529


def bench_launches() -> dict:
    """B18: launches per training step of ``default.yaml``, against a quarter of today's."""
    counted = step_launches("default")
    target = BASELINE // 4
    return row(
        "B18", "launches per training step, default.yaml (a GPU kernel or cuDNN call = 1)",
        counted["launches"], f"<= {target} (a quarter of {BASELINE})",
        counted["launches"] <= target, most=counted["top"],
    )  # fmt: skip
