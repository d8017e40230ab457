"""The shard member reader: WAV slices taken from the bytes equal libsndfile's decoding."""

import io

import numpy as np
import pytest
import soundfile as sf

from diffdenoise.data import audio


def libsndfile(data: bytes, start: int, frames: int) -> np.ndarray:
    with sf.SoundFile(io.BytesIO(data)) as f:
        f.seek(start)
        return f.read(frames, dtype="float32")


@pytest.mark.parametrize("fmt", ["pcm16", "wav"])
@pytest.mark.parametrize("start,frames", [(0, -1), (0, 100), (1234, 500), (3990, 500), (5000, 10)])
def test_wav_slices_equal_libsndfile(fmt, start, frames):
    x = np.random.default_rng(0).uniform(-1, 1, 4000).astype(np.float32)
    data = audio.encode(x, 16000, fmt)
    assert audio.wav_layout(data) is not None  # the fast path, not libsndfile
    got, rate = audio.decode(data, start, frames)
    assert rate == 16000 and got.dtype == np.float32
    np.testing.assert_array_equal(got, libsndfile(data, min(start, 4000), frames))
    assert audio.num_frames(data) == 4000


def test_extensible_wav_is_sliced_and_other_audio_goes_to_libsndfile():
    x = np.random.default_rng(1).uniform(-1, 1, 800).astype(np.float32)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", 16000, 1, "PCM_16", format="WAVEX") as f:
        f.write(x)
    data = buf.getvalue()
    assert audio.wav_layout(data) is not None
    np.testing.assert_array_equal(audio.decode(data, 100, 50)[0], libsndfile(data, 100, 50))
    for other in (audio.encode(x, 16000, "flac"), _stereo_wav(x)):
        assert audio.wav_layout(other) is None
        np.testing.assert_allclose(audio.decode(other, 10, 20)[0], x[10:30], atol=1 / 32768)


def _stereo_wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.stack([x, x], 1), 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()
