"""``python -m diffdenoise.demo_data OUT --minutes M --seed S``: a synthetic speech-like corpus.

Nothing can be downloaded at run time, so the demo synthesizes clean audio with the
structure a denoiser must learn to keep: voiced syllables (a glottal harmonic series with
moving pitch, shaped by moving vowel formants), unvoiced fricative bursts, pauses, and a
few musical tones. The same seed gives the same files, bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from diffdenoise.common.cli import entry
from diffdenoise.data import audio

# (F1, F2, F3) in Hz for a few vowels; syllables glide between two of them.
VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]],
    dtype=np.float64,
)
BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    env[:a] = np.linspace(0, 1, a, endpoint=False) ** 2
    env[n - r :] = np.linspace(1, 0, r) ** 2
    return env


def voiced(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """A syllable: harmonics of a moving f0 weighted by gliding formant resonances."""
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 240) * (1 + rng.uniform(-0.25, 0.25) * t / max(t[-1], 1e-3))
    f0 = f0 * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    v0, v1 = VOWELS[rng.choice(len(VOWELS), 2)]
    glide = np.clip(t / max(t[-1], 1e-3), 0, 1)[None]
    formants = (v0[:, None] * (1 - glide) + v1[:, None] * glide) * rng.uniform(0.9, 1.15)
    n_harm = int(rate / 2 / f0.min()) - 1
    k = np.arange(1, n_harm + 1)[:, None]
    freq = k * f0[None]
    gain = np.zeros_like(freq)
    for i in range(3):  # resonance magnitude of each formant at each harmonic
        gain += (1.0 / (i + 1)) / (1 + ((freq - formants[i]) / BANDWIDTHS[i]) ** 2)
    gain *= (freq < rate / 2) / k**0.5
    wave = (gain * np.sin(k * phase[None])).sum(axis=0)
    return wave * _envelope(n, int(0.02 * rate), int(0.05 * rate))


def fricative(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Band-limited noise burst, like /s/ or /f/."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    centre, width = rng.uniform(0.25, 0.4) * rate, rng.uniform(0.05, 0.15) * rate
    spec *= np.exp(-0.5 * ((freqs - centre) / width) ** 2)
    return np.fft.irfft(spec, n) * _envelope(n, int(0.01 * rate), int(0.02 * rate)) * 4


def tone(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """A musical note with a few decaying harmonics."""
    t = np.arange(n) / rate
    f = 220 * 2 ** (rng.integers(-12, 13) / 12)
    wave = sum((0.6**h) * np.sin(2 * np.pi * f * (h + 1) * t) for h in range(4))
    return wave * np.exp(-t * rng.uniform(1, 4)) * _envelope(n, int(0.005 * rate), n // 10)


def utterance(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """Syllables, fricatives, pauses and the odd tone, peak-normalised to -1..-12 dBFS."""
    total = int(seconds * rate)
    out = np.zeros(total)
    pos = int(rng.uniform(0.05, 0.3) * rate)
    while pos < total:
        choice = rng.random()
        if choice < 0.08:
            n, wave = int(rng.uniform(0.3, 0.8) * rate), None
            wave = tone(rng, n, rate)
        else:
            n = int(rng.uniform(0.12, 0.35) * rate)
            wave = voiced(rng, n, rate)
            if choice < 0.35:
                burst = fricative(rng, int(rng.uniform(0.05, 0.15) * rate), rate)
                wave = np.concatenate([burst * np.abs(wave).max(), wave])
        end = min(pos + wave.shape[0], total)
        out[pos:end] += wave[: end - pos] * rng.uniform(0.4, 1.0)
        pos = end + int(rng.exponential(0.12) * rate)
    peak = np.abs(out).max()
    level = 10 ** (-rng.uniform(1, 12) / 20)
    return (out / max(peak, 1e-9) * level).astype(np.float32)


def generate(
    out: Path, minutes: float, seed: int, rate: int = 16000, workers: int = 1
) -> list[Path]:
    """Write ``OUT/spkNN/utt_NNNN.wav`` files of 2–8 s until ``minutes`` are reached; the
    same files for any ``workers`` (each file's seed stream is its own)."""
    jobs, total, i = [], 0.0, 0
    while total < minutes * 60:
        total += float(np.random.default_rng([seed, i]).uniform(2, 8))  # the file's length
        jobs.append((out / f"spk{i % 8:02d}" / f"utt_{i:04d}.wav", seed, i, rate))
        i += 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_write_utterance, jobs, chunksize=4))
    return [_write_utterance(job) for job in jobs]


def _write_utterance(job: tuple) -> Path:
    path, seed, i, rate = job
    rng = np.random.default_rng([seed, i])
    seconds = float(rng.uniform(2, 8))
    path.parent.mkdir(parents=True, exist_ok=True)
    audio.write(path, utterance(rng, seconds, rate), rate, subtype="PCM_16")
    return path


def example(out: Path, seed: int, rate: int = 16000, snr: float = 5.0) -> tuple[Path, Path]:
    """A held-out pair for demos: ``example_clean.wav`` and ``example_noisy.wav`` (pink noise).

    Its seed stream is disjoint from :func:`generate`'s, so it was never trained on.
    """
    from diffdenoise.data.noise import mix_at_snr, pink

    rng = np.random.default_rng([seed, 10**6])
    clean = utterance(rng, 6.0, rate)
    noisy = mix_at_snr(clean, pink(rng, len(clean)), snr)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "example_clean.wav", out / "example_noisy.wav"
    for path, wave in zip(paths, (clean, noisy)):
        audio.write(path, wave, rate, subtype="FLOAT")
    return paths


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffdenoise.demo_data", description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--example", action="store_true", help="write one held-out noisy/clean pair")
    args = p.parse_args(argv)
    if args.example:
        clean, noisy = example(args.out, args.seed, args.sample_rate)
        print(f"wrote {noisy} and its clean reference {clean}")
        return 0
    paths = generate(args.out, args.minutes, args.seed, args.sample_rate)
    print(f"wrote {len(paths)} files ({args.minutes:g} min) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
