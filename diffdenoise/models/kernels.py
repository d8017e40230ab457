"""The spectral model's one sequential loop as a fused GPU kernel, beside its torch form.

The decision-directed Wiener gain is a recursion over frames. In torch it costs about ten
kernel launches per frame, 2,500 for a 2 s crop at the default 8 ms hop: on an H200 that
made the training step host-bound (76 ms per step for 11 ms of GPU work, measured with
``torch.profiler``). On a CUDA tensor one Triton program per block of bins walks the frames
instead, in one launch; elsewhere (and where Triton is missing) the torch loop runs.
With ``TRITON_INTERPRET=1`` the kernel runs on a CPU too, through Triton's interpreter.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch build: the torch loop serves
    triton = None

BLOCK = 128  # bins per Triton program
# The profiler region of work that is one kernel on a GPU (bench's launch count counts it once).
ONE_LAUNCH = "diffdenoise::one_launch"
# Triton's CPU interpreter: the GPU's path (kernel, and torch.compile around it) on a CPU.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# torch.compile runs this eagerly between its graphs: dynamo failed on the kernel launch
# (H200, torch 2.11), and traced, the torch loop unrolls into a graph of 2,500 ops per crop.
@torch.compiler.disable
def decision_directed(posterior: torch.Tensor, smoothing: float, previous=None) -> torch.Tensor:
    """Wiener gains ``prior / (1 + prior)`` with the decision-directed a-priori SNR
    ``prior_t = smoothing * G_{t-1}^2 * post_{t-1} + (1 - smoothing) * max(post_t - 1, 0)``
    (``G_{-1}^2 * post_{-1}`` is ``previous``, ``(...)``, or 1: a stream continues from it).

    ``posterior``: ``(..., frames)`` a-posteriori SNR; returns float32 gains of its shape.
    """
    if (posterior.is_cuda or INTERPRETED) and triton is not None:
        return decision_directed_triton(posterior, smoothing, previous)
    return decision_directed_torch(posterior, smoothing, previous)


def decision_directed_torch(posterior: torch.Tensor, smoothing: float, previous=None):
    with torch.profiler.record_function(ONE_LAUNCH):  # one Triton kernel on a GPU
        return _decision_directed_loop(posterior, smoothing, previous)


def _decision_directed_loop(posterior: torch.Tensor, smoothing: float, previous=None):
    posterior = posterior.float()
    gains = torch.empty_like(posterior)
    if previous is None:  # |G * Y|^2 / noise of the frame before
        previous = torch.ones_like(posterior[..., 0])
    for t in range(posterior.shape[-1]):
        prior = smoothing * previous + (1 - smoothing) * (posterior[..., t] - 1).clamp_min(0)
        gains[..., t] = prior / (1 + prior)
        previous = gains[..., t].square() * posterior[..., t]
    return gains


def decision_directed_triton(posterior: torch.Tensor, smoothing: float, previous=None):
    """The same recursion in one Triton launch (``TRITON_INTERPRET=1`` runs it on a CPU)."""
    shape, frames = posterior.shape, posterior.shape[-1]
    by_frame = posterior.float().reshape(-1, frames).T.contiguous()  # (frames, bins): coalesced
    gains = torch.empty_like(by_frame)
    bins = by_frame.shape[1]
    if previous is None:
        previous = torch.ones(bins, device=posterior.device)
    previous = previous.float().reshape(bins).contiguous()
    if bins and frames:
        _decision_directed_kernel[(triton.cdiv(bins, BLOCK),)](
            by_frame, previous, gains, bins, frames, smoothing, BLOCK=BLOCK
        )
    return gains.T.reshape(shape)


if triton is not None:

    @triton.jit
    def _decision_directed_kernel(
        post_ptr, previous_ptr, gain_ptr, bins, frames, smoothing, BLOCK: tl.constexpr
    ):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < bins
        previous = tl.load(previous_ptr + offsets, mask=inside, other=1.0)
        for t in range(frames):
            post = tl.load(post_ptr + t * bins + offsets, mask=inside, other=1.0)
            prior = smoothing * previous + (1 - smoothing) * tl.maximum(post - 1.0, 0.0)
            gain = prior / (1.0 + prior)
            tl.store(gain_ptr + t * bins + offsets, gain, mask=inside)
            previous = gain * gain * post
