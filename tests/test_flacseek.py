"""FLAC seek tables: one point per frame, the audio unchanged, every seek exact."""

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from diffdenoise.data import audio, flacseek

RATE, BLOCK = 48000, 4096  # libFLAC's frame size through libsndfile


def plain_flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def seek_points(data: bytes) -> list[tuple[int, int, int]]:
    assert data[42] & 0x7F == flacseek.SEEKTABLE, "the block after STREAMINFO"
    size = int.from_bytes(data[43:46], "big")
    return [struct.unpack_from(">QQH", data, 46 + i) for i in range(0, size, 18)]


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "speech-like": (0.1 * rng.standard_normal(RATE * 3 + 123)).astype(np.float32),
        # full-scale noise does not compress: its frames hold many false sync codes
        "full-scale": rng.uniform(-1, 1, RATE * 2).astype(np.float32),
        "silence": np.zeros(RATE * 2, np.float32),
    }


@pytest.mark.parametrize("name", list(signals()))
def test_one_point_per_frame_and_the_same_audio(name):
    x = signals()[name]
    data = audio.encode(x, RATE, "flac")
    points = seek_points(data)
    frames = -(-len(x) // BLOCK)
    assert [p[0] for p in points] == [k * BLOCK for k in range(frames)]
    assert points[-1][2] == len(x) - (frames - 1) * BLOCK and points[0][2] == BLOCK
    plain = plain_flac(x)
    start = flacseek._metadata(plain)[0] + len(data) - len(plain)  # where frame 0 moved
    assert all(data[start + offset : start + offset + 2] == b"\xff\xf8" for _, offset, _ in points)
    whole, _ = sf.read(io.BytesIO(data), dtype="int16")
    np.testing.assert_array_equal(whole, sf.read(io.BytesIO(plain_flac(x)), dtype="int16")[0])


@pytest.mark.parametrize("name", list(signals()))
def test_every_seek_reads_the_right_samples(name):
    x = signals()[name]
    data = audio.encode(x, RATE, "flac")
    whole = sf.read(io.BytesIO(data), dtype="int16")[0]
    rng = np.random.default_rng(1)
    starts = [0, BLOCK - 1, BLOCK, 5 * BLOCK + 7, len(x) - 1, *rng.integers(0, len(x), 20)]
    for start in starts:
        crop = audio.Encoded(data).read(int(start), 9000, keep_int16=True)
        np.testing.assert_array_equal(crop, whole[start : start + 9000])


@pytest.mark.parametrize("n", [1, 100, BLOCK - 1, BLOCK, BLOCK + 1])
def test_short_streams_get_a_table_too(n):
    x = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    data = audio.encode(x, RATE, "flac")
    assert len(seek_points(data)) == -(-n // BLOCK)
    np.testing.assert_array_equal(audio.decode(data)[0], audio.decode(plain_flac(x))[0])


def test_streams_it_cannot_index_come_back_unchanged():
    x = signals()["speech-like"]
    indexed = audio.encode(x, RATE, "flac")
    plain = plain_flac(x)
    truncated = plain[: len(plain) // 2]  # fewer frames than STREAMINFO announces
    for data in (indexed, truncated, audio.encode(x, RATE, "pcm16"), b"fLaC", b""):
        assert flacseek.add_seektable(data) == data


def test_crc8_is_flacs_header_check():
    assert flacseek.crc8(b"123456789") == 0xF4  # CRC-8 (x^8 + x^2 + x + 1)'s check value
    assert flacseek.crc8(b"") == 0 and flacseek.crc8(b"\x01") == 0x07
