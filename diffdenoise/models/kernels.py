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


def decision_directed(posterior: torch.Tensor, smoothing: float, previous=None) -> torch.Tensor:
    """Wiener gains ``prior / (1 + prior)`` with the decision-directed a-priori SNR
    ``prior_t = smoothing * G_{t-1}^2 * post_{t-1} + (1 - smoothing) * max(post_t - 1, 0)``
    (``G_{-1}^2 * post_{-1}`` is ``previous``, ``(...)``, or 1: a stream continues from it).

    ``posterior``: ``(..., frames)`` a-posteriori SNR; returns float32 gains of its shape.
    It is the custom operator ``diffdenoise::decision_directed``: ``torch.compile`` keeps
    it as one opaque node of its graph (traced, the loop unrolls into 2,500 ops per crop,
    and dynamo could not trace the Triton launch), and it has an exact backward.
    """
    if previous is None:
        previous = torch.ones_like(posterior[..., 0], dtype=torch.float32)
    return _decision_directed_op(posterior.float(), float(smoothing), previous.float())


@torch.library.custom_op("diffdenoise::decision_directed", mutates_args=())
def _decision_directed_op(
    posterior: torch.Tensor, smoothing: float, previous: torch.Tensor
) -> torch.Tensor:
    if (posterior.is_cuda or INTERPRETED) and triton is not None:
        return decision_directed_triton(posterior, smoothing, previous)
    return decision_directed_torch(posterior, smoothing, previous)


@_decision_directed_op.register_fake
def _(posterior, smoothing, previous):
    return torch.empty_like(posterior, dtype=torch.float32)  # its layout, as both paths


def _setup_context(ctx, inputs, output) -> None:
    posterior, smoothing, previous = inputs
    ctx.save_for_backward(posterior, previous, output)
    ctx.smoothing = smoothing


def _backward(ctx, grad: torch.Tensor):
    posterior, previous, gains = ctx.saved_tensors
    grad_post, grad_previous = decision_directed_backward(
        grad, posterior, previous, gains, ctx.smoothing
    )
    return grad_post, None, grad_previous


_decision_directed_op.register_autograd(_backward, setup_context=_setup_context)


def decision_directed_backward(grad, posterior, previous, gains, smoothing: float):
    """Gradients of the recursion for ``posterior`` and ``previous``, walking the frames
    back; ``carry`` is the gradient reaching ``G_t^2 * post_t``, the next frame's previous
    term. All ``(..., frames)`` except ``previous``, ``(...)``."""
    before = torch.cat([previous[..., None], gains[..., :-1].square() * posterior[..., :-1]], -1)
    prior = smoothing * before + (1 - smoothing) * (posterior - 1).clamp_min(0)
    grad_post = torch.zeros_like(posterior)
    carry = torch.zeros_like(previous)
    for t in range(posterior.shape[-1] - 1, -1, -1):
        g, post = gains[..., t], posterior[..., t]
        d_prior = (grad[..., t] + carry * 2 * g * post) / (1 + prior[..., t]).square()
        grad_post[..., t] = carry * g.square() + d_prior * (1 - smoothing) * (post > 1)
        carry = d_prior * smoothing
    return grad_post, carry


def decision_directed_torch(posterior: torch.Tensor, smoothing: float, previous=None):
    with torch.profiler.record_function(ONE_LAUNCH):  # one Triton kernel on a GPU
        return _decision_directed_loop(posterior, smoothing, previous)


def _decision_directed_loop(posterior: torch.Tensor, smoothing: float, previous=None):
    posterior = posterior.float()
    gains = torch.empty_like(posterior)  # the posterior's layout, as the fake kernel says
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
    return torch.empty_like(posterior, dtype=torch.float32).copy_(gains.T.reshape(shape))


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
