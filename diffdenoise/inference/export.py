"""``python -m diffdenoise.export CKPT -o model.onnx [--streaming]``: a causal model to ONNX.

Both graphs are the model's one-frame step (:meth:`CausalSpectralModel.step_graph`), with its
DFTs as small matrix products (:class:`~diffdenoise.models.causal.FactoredDft`):

- offline (default): ``blocks (frames, 1, hop)`` -> ``(frames, 1, hop)``, the step scanned
  over a dynamic number of frames (an ONNX ``Scan``); :class:`OnnxDenoiser` pads a file
  into blocks and trims the result, as
  :class:`~diffdenoise.inference.realtime.StreamingDenoiser` does;
- ``--streaming``: ``samples (1, hop)`` and every state tensor in, ``out (1, hop)`` and
  ``next_<state>`` out, for a host that keeps the state between frames.

The model's rate, hop, window, lookahead and state names are in the ONNX metadata.
Needs the ``export`` extra: ``pip install 'diffdenoise[export]'``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffdenoise.common.cli import check_writable, entry, os_error_line
from diffdenoise.data import audio
from diffdenoise.inference.denoiser import Denoiser
from diffdenoise.models.causal import CausalSpectralModel, FactoredDft
from diffdenoise.training.checkpoint import CheckpointError

# onnxscript's optimizer takes "+ 1e-10" for "+ 0" and drops it (the log of a silent frame
# became NaN); onnxruntime optimises the graph when it loads it anyway.
OPTIONS = {"dynamo": True, "optimize": False, "verbose": False}


class ExportError(RuntimeError):
    """A model or file that cannot be exported or run, in one line."""


class _Step(nn.Module):
    """The step with its timestep FiLM and DFT bases baked in."""

    def __init__(self, model: CausalSpectralModel, timestep: int):
        super().__init__()
        self.model, self.dft = model.eval(), FactoredDft(model.n_fft)
        self.names = list(model.initial_state(1))
        with torch.no_grad():
            scale, shift = model.film(torch.full((1,), float(timestep)))
        self.register_buffer("scale", scale.clone())  # not views of one tensor: the scan
        self.register_buffer("shift", shift.clone())  # refuses inputs that alias

    def run(self, samples, states: tuple) -> tuple[torch.Tensor, tuple]:
        state = dict(zip(self.names, states))
        out, new = self.model.step_graph(samples, state, self.scale, self.shift, self.dft)
        return out, tuple(new[k] for k in self.names)


class StreamingGraph(_Step):
    def forward(self, samples, *states):
        out, new = self.run(samples, states)
        return (out, *new)


class OfflineGraph(_Step):
    def forward(self, blocks):
        from torch._higher_order_ops.scan import scan

        def body(carry, samples):
            out, new = self.run(samples, carry)
            dense = (t.clone(memory_format=torch.contiguous_format) for t in new)
            return tuple(dense), out.clone()  # carries keep one layout through the scan

        start = tuple(self.model.initial_state(1).values())
        return scan(body, start, blocks)[1]


def export(model: CausalSpectralModel, rate: int, path: Path, streaming: bool, timestep=0):
    """Write ``path``; returns its metadata."""
    graph = (StreamingGraph if streaming else OfflineGraph)(model, timestep)
    state = model.initial_state(1)
    meta = {
        "kind": "streaming" if streaming else "offline", "sample_rate": rate,
        "hop": model.hop, "n_fft": model.n_fft, "lookahead": model.lookahead,
        "latency_ms": model.latency_ms, "states": graph.names,
    }  # fmt: skip
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if streaming:
            inputs = (torch.zeros(1, model.hop), *state.values())
            names = dict(
                input_names=["samples", *graph.names],
                output_names=["out", *[f"next_{k}" for k in graph.names]],
            )
            program = torch.onnx.export(graph, inputs, **names, **OPTIONS)
        else:
            frames = torch.export.Dim("frames", min=2)
            program = torch.onnx.export(
                graph, (torch.zeros(4, 1, model.hop),), dynamic_shapes=({0: frames},),
                input_names=["blocks"], output_names=["out"], **OPTIONS,
            )  # fmt: skip
    program.model.metadata_props.update({k: json.dumps(v) for k, v in meta.items()})
    program.save(str(path))
    return meta


class OnnxDenoiser:
    """Denoise audio with an offline graph in onnxruntime; the same output as the
    checkpoint's causal model (to 1e-4)."""

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("onnxruntime is missing: pip install 'diffdenoise[export]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options)
        except Exception as err:
            first = str(err).strip().splitlines()[0][:160]
            raise ExportError(f"{path}: not a loadable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.meta = {k: json.loads(v) for k, v in meta.items()}
        if self.meta.get("kind") != "offline":
            raise ExportError(
                f"{path}: not an offline diffdenoise graph (export without --streaming)"
            )
        self.sample_rate, self.device = self.meta["sample_rate"], "onnxruntime (CPU)"

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """``(time,)`` float audio at :attr:`sample_rate` -> denoised, same length."""
        hop, n_fft, ahead = self.meta["hop"], self.meta["n_fft"], self.meta["lookahead"]
        past, length = n_fft - hop, wave.shape[-1]
        frames = math.ceil((length + past) / hop) + ahead
        blocks = np.zeros(frames * hop, np.float32)
        blocks[:length] = wave
        out = self.session.run(None, {"blocks": blocks.reshape(frames, 1, hop)})[0]
        return out.reshape(-1)[ahead * hop + past :][:length]

    def stream(self, blocks, rate: int, channels: int, frames: int):
        """``(channels, n)`` blocks of one file -> its denoised audio, one block (the graph
        takes the whole input; it is causal, so nothing is gained by cutting it)."""
        wave = np.concatenate(list(blocks), axis=1)
        if not np.isfinite(wave).all():
            raise audio.AudioError("audio contains NaN or infinite samples")
        model_rate = audio.resample(wave, rate, self.sample_rate)
        out = np.stack([self(channel) for channel in model_rate])
        yield audio.resample(out, self.sample_rate, rate)[:, :frames]

    # The checkpoint denoiser's file handling (atomic write, the input's format and subtype)
    # needs only ``stream`` from its object.
    denoise_file = Denoiser.denoise_file


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m diffdenoise.export", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("checkpoint", type=Path, help="best.pt of a model.causal run")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--streaming", action="store_true", help="the one-frame graph with state")
    p.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA ones")
    from diffdenoise.inference.loading import (
        add_share_args,
        model_from_checkpoint,
        set_shares,
        shares_of,
    )

    add_share_args(p)  # the graph keeps the shares it is exported with
    args = p.parse_args(argv)

    try:
        check_writable(args.output)  # before the export's half a minute of work
        model, cfg = model_from_checkpoint(args.checkpoint, not args.no_ema)
        if not isinstance(model, CausalSpectralModel):
            raise ExportError(
                f"{args.checkpoint}: export needs a causal model (model.causal: true, as in "
                "configs/realtime.yaml)"
            )
        set_shares(model, args.checkpoint, shares_of(args))
        meta = export(
            model, cfg.data.sample_rate, args.output, args.streaming, cfg.noise.infer_timestep
        )
    except (CheckpointError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    size = args.output.stat().st_size / 1e6
    print(
        f"wrote {args.output} ({meta['kind']} graph, {size:.1f} MB): {meta['sample_rate']} Hz, "
        f"frame {meta['hop']} samples, latency {meta['latency_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
