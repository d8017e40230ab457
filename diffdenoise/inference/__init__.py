"""Inference: the :class:`Denoiser` for files and arrays of any length (overlapping
segments, streamed overlap-add), the frame-by-frame :class:`StreamingDenoiser`, ONNX export
and its runner, and the checkpoint loading they share."""
