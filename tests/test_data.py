import tarfile

import numpy as np
import pytest
import torch

from diffdenoise.data import mixing, noise
from diffdenoise.data import pipeline as data
from tests.helpers import make_shards


def mixer(**kw):
    args = dict(
        weights={"gaussian": 1, "pink": 1, "brown": 1},
        snr_min=-5,
        snr_max=20,
        gain_min_db=0,
        gain_max_db=0,
        timestep="random",
        timesteps=1000,
        infer_timestep=0,
    )
    args.update(kw)
    return data.Mixer(**args)


def stream(urls, bank=None, **kw):
    """Loader batches, mixed as the training loop mixes them (on the CPU here)."""
    args = dict(
        segment=8000,
        sample_rate=16000,
        batch_size=3,
        batches=4,
        mixer=mixer(),
        seed=0,
        rank=0,
        world_size=1,
        shuffle_buffer=8,
    )
    args.update(kw)
    stream = data.TrainStream(urls, **args)
    return (data.render(b, "cpu", bank, sample_rate=args["sample_rate"]) for b in stream)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("d"), n=8)


def test_batches_shapes_snr_and_timesteps(shards):
    urls = data.expand_urls(str(shards / "train-*.tar"))
    batches = list(stream(urls))
    assert len(batches) == 4
    b = batches[0]
    assert b["noisy"].shape == b["clean"].shape == (3, 1, 8000)
    assert b["t"].dtype == torch.long and ((b["t"] >= 0) & (b["t"] < 1000)).all()
    for i in range(3):
        measured = noise.snr_db(b["clean"][i, 0].numpy(), b["noisy"][i, 0].numpy())
        assert measured == pytest.approx(b["snr"][i].item(), abs=0.1)
        assert -5 <= b["snr"][i] <= 20


def test_pipe_url(shards):
    url = f"pipe:cat {sorted(shards.glob('train-*.tar'))[0]}"
    assert data.expand_urls(url) == [url]
    assert len(list(stream([url], batches=2))) == 2
    assert data.manifest_stats([url])["samples"] > 0


def test_glob_matching_nothing_is_clear(tmp_path):
    with pytest.raises(data.DataError, match="no shard matches"):
        data.expand_urls(str(tmp_path / "x-*.tar"))


def test_resume_skips_to_the_same_batches(shards):
    urls = data.expand_urls(str(shards / "train-*.tar"))
    full = list(stream(urls, batches=6))
    resumed = list(stream(urls, batches=6, skip_batches=4))
    assert len(resumed) == 2
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a["noisy"], b["noisy"]) and a["keys"] == b["keys"]


def loader_batches(urls, n, workers, **kw):
    args = dict(segment=8000, sample_rate=16000, batch_size=2, batches=4, mixer=mixer(), seed=0)
    args.update(rank=0, world_size=1, shuffle_buffer=4, epochs=None, **kw)
    batches = iter(data.train_loader(data.TrainStream(urls, **args), workers))
    return [next(batches) for _ in range(n)]


def test_endless_stream_is_its_epochs_in_a_row(shards):
    urls = data.expand_urls(str(shards / "train-*.tar"))
    endless = loader_batches(urls, 8, 0)
    epochs = [b for e in (0, 1) for b in stream(urls, epoch=e, batch_size=2, shuffle_buffer=4)]
    assert [b["keys"] for b in endless] == [b["keys"] for b in epochs]
    assert all(torch.equal(a["snr"], b["snr"]) for a, b in zip(endless, epochs))


@pytest.mark.parametrize("start", [3, 5])
def test_two_worker_loader_resumes_from_any_batch_across_epochs(shards, start):
    """Workers live across epochs; a resume at an odd batch or in a later epoch still
    yields the uninterrupted batches in order."""
    urls = data.expand_urls(str(shards / "train-*.tar"))
    full = loader_batches(urls, 11, 2)
    epoch, skip = divmod(start, 4)
    resumed = loader_batches(urls, 11 - start, 2, epoch=epoch, skip_batches=skip)
    for a, b in zip(full[start:], resumed, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["clean"], b["clean"])
        assert torch.equal(a["snr"], b["snr"])


def test_ranks_and_epochs_see_different_data(shards):
    urls = data.expand_urls(str(shards / "train-*.tar"))
    r0 = next(iter(stream(urls, rank=0, world_size=2)))
    r1 = next(iter(stream(urls, rank=1, world_size=2)))
    e1 = next(iter(stream(urls, rank=0, world_size=2, epoch=1)))
    assert not torch.equal(r0["noisy"], r1["noisy"])
    assert not torch.equal(r0["noisy"], e1["noisy"])


def test_slot_assignment_partitions_shards():
    urls = [f"s{i}.tar" for i in range(7)]
    for epoch in range(3):
        got = [u for slot in range(4) for u in data.slot_shards(urls, 5, epoch, slot, 4)]
        assert sorted(got) == urls  # each shard to exactly one slot
    few = [data.slot_shards(urls[:3], 5, 0, s, 4) for s in range(4)]
    assert all(len(x) == 1 for x in few)  # more slots than shards: everyone gets one


def test_silent_clean_crop_is_finite(tmp_path):
    import soundfile as sf

    from diffdenoise.data import sharding as shard

    src = tmp_path / "src"
    src.mkdir()
    audio_ = np.zeros(32000, np.float32)
    audio_[-3000:] = 0.3 * np.sin(np.arange(3000) / 5)  # mostly silent file
    sf.write(str(src / "quiet.wav"), audio_, 16000)
    shard.main([str(src), "--name", "q", "--out", str(tmp_path / "s"), "--val-fraction", "0"])
    urls = data.expand_urls(str(tmp_path / "s/q/train-*.tar"))
    batches = list(stream(urls, segment=4000, batch_size=4, batches=5))
    for b in batches:
        assert torch.isfinite(b["noisy"]).all()


@pytest.mark.parametrize("speed", [0.0, 0.2])
def test_paired_shards_use_stored_noisy(tmp_path, speed):
    import soundfile as sf

    from diffdenoise.data import sharding as shard
    from tests.helpers import make_corpus

    clean = make_corpus(tmp_path / "gt", n=2)
    for path in clean.rglob("*.wav"):
        x, sr = sf.read(str(path), dtype="float32")
        out = tmp_path / "gl" / path.relative_to(clean)
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), -x, sr)  # a "noisy" version we can recognise
    shard.main(
        [
            str(clean),
            "--noisy-dir",
            str(tmp_path / "gl"),
            "--name",
            "p",
            "--out",
            str(tmp_path / "s"),
            "--val-fraction",
            "0",
        ]
    )
    urls = data.expand_urls(str(tmp_path / "s/p/train-*.tar"))
    b = next(iter(stream(urls, batch_size=2, batches=1, mixer=mixer(speed_perturb=speed))))
    assert torch.allclose(b["noisy"], -b["clean"], atol=1e-4)  # a twin played at its speed
    assert torch.isnan(b["snr"]).all()


def test_corrupt_member_is_skipped_and_counted(shards, tmp_path):
    src = sorted(shards.glob("train-*.tar"))[0]
    bad = tmp_path / "bad.tar"
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        for i, member in enumerate(tin):
            payload = tin.extractfile(member).read()
            if i == 0:  # break the first sample's audio
                payload = b"not flac at all"
            import io

            member.size = len(payload)
            tout.addfile(member, io.BytesIO(payload))
    with pytest.warns(UserWarning, match="undecodable"):
        batches = list(stream([str(bad)], batch_size=2, batches=3))
    assert len(batches) == 3 and sum(b["bad_samples"] for b in batches) >= 1


def test_validation_is_deterministic_and_rank_split_is_exact(shards):
    urls = data.expand_urls(str(shards / "val-*.tar"))
    kw = dict(segment=8000, sample_rate=16000, batch_size=2, mixer=mixer())
    one = list(data.val_batches(urls, rank=0, world_size=1, **kw))
    again = list(data.val_batches(urls, rank=0, world_size=1, **kw))
    two = [b for r in (0, 1) for b in data.val_batches(urls, rank=r, world_size=2, **kw)]
    assert all(torch.equal(a["noisy"], b["noisy"]) for a, b in zip(one, again, strict=True))
    by_key = {k: b["noisy"][i] for b in one for i, k in enumerate(b["keys"])}
    by_key2 = {k: b["noisy"][i] for b in two for i, k in enumerate(b["keys"])}
    assert by_key.keys() == by_key2.keys() and len(by_key) > 1
    assert all(torch.equal(by_key[k], by_key2[k]) for k in by_key)
    assert all((b["t"] == 0).all() for b in one)


def test_corpus_noise_from_noise_shards(tmp_path):
    noise_dir = make_shards(tmp_path, name="n", n=4)
    clean_dir = make_shards(tmp_path, name="c", n=4)
    urls = data.expand_urls(str(clean_dir / "train-*.tar"))
    noise_urls = data.expand_urls(str(noise_dir / "train-*.tar"))
    bank = data.NoiseBank.from_urls(noise_urls)
    assert len(bank.lengths) == data.manifest_stats(noise_urls)["samples"]
    m = mixer(weights={"corpus": 1.0}, snr_min=5, snr_max=5).with_bank(bank.lengths)
    b = next(iter(stream(urls, bank=bank, mixer=m, batches=1)))
    for i in range(3):
        assert noise.snr_db(b["clean"][i, 0].numpy(), b["noisy"][i, 0].numpy()) == pytest.approx(
            5, abs=0.1
        )
        crop = bank.crop(b["plan"]["clip"][i, :1], b["plan"]["start"][i, :1], 8000)[0]
        residual = (b["noisy"][i, 0] - b["clean"][i, 0]).numpy()
        assert abs(np.corrcoef(residual, crop.numpy())[0, 1]) > 0.999  # that bank crop
    with pytest.raises(data.DataError, match="noise_shards"):
        next(iter(stream(urls, mixer=mixer(weights={"corpus": 1.0}), batches=1)))


def test_epoch_length_from_manifest(shards):
    urls = data.expand_urls(str(shards / "train-*.tar"))
    stats = data.manifest_stats(urls)
    assert stats["sample_rates"] == [16000] and stats["samples"] >= 4
    assert data.batches_per_epoch(stats["samples"], 2, 2) == stats["samples"] // 4


def render_plans(m, clean: np.ndarray, seeds, bank=None, babble=None) -> dict:
    """Mix ``clean`` under the plans ``m`` draws from each seed, as the device would."""
    plans = [m.plan(np.random.default_rng(i), clean.shape[0]) for i in seeds]
    batch = data.collate([(clean, None, p, f"k{i}", "u") for i, p in zip(seeds, plans)])
    return data.render(batch, "cpu", bank, babble=babble, sample_rate=16000)


@pytest.mark.parametrize(
    "kind", ["gaussian", "pink", "brown", "corpus", "babble", "tonal", "bursts"]
)
def test_device_mixer_hits_the_snr_of_every_noise_type(kind, tmp_path):
    clean = np.sin(np.linspace(0, 900, 16000)).astype(np.float32) * 0.3
    bank = None
    m = mixer(weights={kind: 1.0}, snr_min=-10, snr_max=30, eq_db=6.0, second_prob=0.5,
              modulation_prob=0.5, modulation_db=20.0, reverb_prob=0.5,
              speech_eq_db=6.0)  # fmt: skip
    if kind in ("corpus", "babble"):
        bank = data.NoiseBank.from_urls(data.expand_urls(str(make_shards(tmp_path) / "*.tar")))
        m = m.with_bank(bank.lengths) if kind == "corpus" else m.with_babble(bank.lengths)
    b = render_plans(m, clean, range(40), bank, babble=bank if kind == "babble" else None)
    assert (b["plan"]["level"] > 0).any() and (b["plan"]["level"] == 0).any()
    assert (b["plan"]["mod_db"] > 0).any() and (b["plan"]["mod_db"] == 0).any()
    assert (b["plan"]["rt60"] > 0).any() and (b["plan"]["rt60"] == 0).any()
    for i in range(40):
        measured = noise.snr_db(b["clean"][i, 0].numpy(), b["noisy"][i, 0].numpy())
        assert measured == pytest.approx(b["snr"][i].item(), abs=0.1)


def test_noise_types_have_their_colour():
    """Power in the top octave over the bottom one: white flat, pink and brown falling."""
    clean = np.zeros(16000, np.float32)
    tilt = {}
    for kind in ("gaussian", "pink", "brown"):
        b = render_plans(mixer(weights={kind: 1.0}, snr_min=0, snr_max=0), clean, range(8))
        spec = np.abs(np.fft.rfft((b["noisy"] - b["clean"])[:, 0].numpy(), axis=-1)) ** 2
        low, high = spec[:, 20:40].mean(), spec[:, 4000:8000].mean()
        tilt[kind] = 10 * np.log10(high / low)
    assert abs(tilt["gaussian"]) < 1.5
    assert -25 < tilt["pink"] < -15  # 1/f over about 7.6 octaves: about -23 dB
    assert tilt["brown"] < tilt["pink"] - 15


def test_mixer_augmentations_keep_the_snr_and_leave_a_share_clean():
    clean = np.sin(np.linspace(0, 900, 16000)).astype(np.float32) * 0.3
    b = render_plans(mixer(clean_prob=0.3, eq_db=6.0, second_prob=0.5), clean, range(200))
    untouched = torch.isinf(b["snr"])
    assert 40 <= int(untouched.sum()) <= 80  # about 30 %
    assert torch.equal(b["noisy"][untouched], b["clean"][untouched])
    for i in (~untouched).nonzero()[:, 0].tolist():
        measured = noise.snr_db(b["clean"][i, 0].numpy(), b["noisy"][i, 0].numpy())
        assert measured == pytest.approx(b["snr"][i].item(), abs=0.1)


def test_mixer_without_augmentations_draws_the_same_stream_as_before():
    plain = mixer().plan(np.random.default_rng(7), 4000)
    off = mixer(clean_prob=0.0, eq_db=0.0, second_prob=0.0, modulation_prob=0.0, reverb_prob=0.0,
                speech_eq_db=0.0)  # fmt: skip
    off = off.plan(np.random.default_rng(7), 4000)
    assert repr(plain) == repr(off)
    rng = np.random.default_rng(7)  # the original recipe's draws, in order
    kind = int(rng.choice(3, p=[1 / 3] * 3))
    seed = int(rng.integers(2**62))
    assert plain["sources"][0][:2] == (kind, seed)
    assert plain["snr"] == float(rng.uniform(-5, 20))
    assert plain["t"] == int((rng.uniform(0, 0), rng.integers(0, 1000))[1])


def test_planned_rooms_reverberate_the_clean_target_and_depend_on_the_example_alone():
    from diffdenoise.bench import demo_data

    speech = demo_data.utterance(np.random.default_rng(7), 1.5, 16000)
    dry = np.concatenate([speech, np.zeros(8000, np.float32)])  # then 0.5 s of silence
    m = mixer(reverb_prob=0.5, reverb_rt60_min=0.3, reverb_rt60_max=1.2, snr_min=10, snr_max=10)
    b = render_plans(m, dry, range(12))
    rooms = b["plan"]["rt60"] > 0
    assert 2 <= int(rooms.sum()) <= 10 and torch.all(b["plan"]["rt60"][rooms] >= 0.3)
    gain = 10 ** (b["plan"]["gain_db"] / 20)
    for i in range(12):
        target = b["clean"][i, 0].numpy() / gain[i].item()
        if not rooms[i]:
            assert np.allclose(target, dry, atol=1e-6)  # no room: the crop as it was
            continue
        assert np.sqrt(np.mean(target**2)) == pytest.approx(np.sqrt(np.mean(dry**2)), rel=1e-4)
        assert np.sqrt(np.mean(target[24000:25600] ** 2)) > 1e-3  # the room rings on
        measured = noise.snr_db(b["clean"][i, 0].numpy(), b["noisy"][i, 0].numpy())
        assert measured == pytest.approx(10.0, abs=0.1)  # against the reverberant clean
    for i in rooms.nonzero()[:, 0].tolist():  # alone, or batched with longer rooms
        alone = render_plans(m, dry, [i])["clean"][0]  # equal up to the batched FFT's rounding
        assert torch.allclose(alone, b["clean"][i], rtol=0, atol=1e-6)
    with pytest.raises(data.DataError, match="needs the sample rate"):
        batch = data.collate([(dry, None, m.plan(np.random.default_rng(i), 32000), "k", "u")
                              for i in rooms.nonzero()[:1, 0].tolist()])  # fmt: skip
        data.render(batch, "cpu")


def test_speech_eq_shapes_the_clean_target_smoothly_and_keeps_its_level():
    from diffdenoise.bench import demo_data
    from diffdenoise.data import mixing

    speech = demo_data.utterance(np.random.default_rng(3), 1.0, 16000)
    b = render_plans(mixer(speech_eq_db=6.0, snr_min=10, snr_max=10), speech, range(6))
    gains = b["plan"]["speech_eq"]
    assert gains.shape == (6, mixing.EQ_BANDS) and 0 < gains.abs().max() <= 6.0
    weights = mixing._eq_weights(8001, "cpu").numpy()
    for i in range(6):
        target = b["clean"][i, 0].numpy() / 10 ** (b["plan"]["gain_db"][i].item() / 20)
        curve = 10 ** (weights @ gains[i].numpy() / 20)
        expected = np.fft.irfft(np.fft.rfft(speech) * curve, len(speech))
        expected *= np.sqrt(np.mean(speech**2) / np.mean(expected**2))
        assert np.allclose(target, expected, atol=1e-5)  # the planned curve, level kept
        measured = noise.snr_db(b["clean"][i, 0].numpy(), b["noisy"][i, 0].numpy())
        assert measured == pytest.approx(10.0, abs=0.1)  # against the equalised clean
    off = render_plans(mixer(snr_min=10, snr_max=10), speech, range(2))
    assert not off["plan"]["speech_eq"].any()
    assert torch.allclose(off["clean"][:, 0] / 10 ** (off["plan"]["gain_db"][:, None] / 20),
                          torch.from_numpy(speech)[None], atol=1e-6)  # fmt: skip


def frame_levels_db(wave: np.ndarray, frame: int) -> np.ndarray:
    frames = wave[: wave.shape[-1] // frame * frame].reshape(*wave.shape[:-1], -1, frame)
    return 10 * np.log10(np.square(frames).mean(-1))


def test_modulated_noise_rises_and_falls_at_its_depth_and_rate():
    clean = np.zeros(32000, np.float32)  # 2 s at 16 kHz
    on = dict(weights={"gaussian": 1.0}, snr_min=0, snr_max=0, modulation_db=20.0)
    b = render_plans(mixer(**on, modulation_prob=1.0), clean, range(24))
    still = render_plans(mixer(**on, modulation_prob=0.0), clean, range(24))
    levels = frame_levels_db((b["noisy"] - b["clean"])[:, 0].numpy(), 800)  # 50 ms frames
    swing = levels.max(1) - levels.min(1)
    depth = b["plan"]["mod_db"][:, 0].numpy()
    assert np.ptp(frame_levels_db(still["noisy"][:, 0].numpy(), 800), 1).max() < 2.0
    assert swing.max() > 8.0 and (swing < depth + 2.0).all()  # tanh keeps it within +-depth/2
    assert np.corrcoef(depth, swing)[0, 1] > 0.7
    points = b["plan"]["mod_points"][:, 0].numpy()  # 0.5-8 Hz over 2 s: 2 to 17 points
    assert points.min() >= 2 and points.max() <= 17 and np.ptp(points) > 5
    again = render_plans(mixer(**on, modulation_prob=1.0), clean, range(24))
    assert torch.equal(b["noisy"], again["noisy"])  # seeded: resume and validation hold


def test_babble_is_its_talkers_from_the_bank_each_at_unit_power_summed():
    rate, n = 16000, 8000
    tones = [100.0, 330.0, 730.0, 1270.0, 2100.0, 3300.0]  # one "talker" per clip
    clips = [np.sin(2 * np.pi * f * np.arange(3 * rate) / rate).astype(np.float32) * a
             for f, a in zip(tones, (0.5, 0.05, 0.2, 0.01, 0.3, 0.1))]  # fmt: skip
    bank = data.NoiseBank(clips)
    m = mixer(weights={"babble": 1.0}, babble_talkers=3).with_babble(bank.lengths)
    plans = [m.plan(np.random.default_rng(i), n) for i in range(6)]
    batch = data.collate([(np.zeros(n, np.float32), None, p, f"k{i}", "u") for i, p in
                          enumerate(plans)])  # fmt: skip
    noise = mixing.synthesize(batch["plan"], n, "cpu", babble=bank)
    for i in range(len(plans)):
        clip, start = (batch["plan"][k][i, 0].numpy() for k in ("talker_clip", "talker_start"))
        pcm = [np.round(np.clip(clips[c], -1, 1 - 1 / 32768) * 32768) / 32768 for c in clip]
        talkers = [x[s : s + n] / np.sqrt(np.mean(x[s : s + n] ** 2)) for x, s in zip(pcm, start)]
        expected = np.sum(talkers, 0) / np.sqrt(np.mean(np.sum(talkers, 0) ** 2))
        assert np.abs(noise[i].numpy() - expected).max() < 1e-4
        assert (start + n <= np.asarray(bank.lengths)[clip]).all()  # whole crops, no looping
    with pytest.raises(data.DataError, match="noise.weights.babble needs the babble bank"):
        mixing.synthesize(batch["plan"], n, "cpu")


def test_babble_bank_holds_the_first_seconds_of_the_speech_in_shard_order(tmp_path):
    urls = data.expand_urls(str(make_shards(tmp_path) / "*.tar"))
    whole = data.NoiseBank.from_urls(urls)
    capped = data.NoiseBank.from_urls(urls, max_seconds=3.0)
    assert sum(whole.lengths) > 2 * 16000 * 3.0
    assert 3.0 * 16000 <= sum(capped.lengths) < 3.0 * 16000 + max(whole.lengths)
    assert capped.lengths == whole.lengths[: len(capped.lengths)]
    assert torch.equal(capped.pcm, whole.pcm[: capped.pcm.shape[0]])


def test_device_eq_shapes_the_noise_and_flips_its_polarity():
    clean = np.zeros(16000, np.float32)
    m = mixer(weights={"gaussian": 1.0}, snr_min=0, snr_max=0)
    plans = [m.plan(np.random.default_rng(0), 16000) for _ in range(2)]  # the same white noise
    batch = data.collate([(clean, None, p, f"k{i}", "u") for i, p in enumerate(plans)])
    eq_db = np.linspace(-6, 6, 8)  # -6 dB at the bottom, +6 at the top
    batch["plan"]["eq"][1, 0] = torch.from_numpy(eq_db)
    batch["plan"]["sign"][1, 0] = -1.0
    b = data.render(batch, "cpu")
    flat, shaped = (b["noisy"] - b["clean"])[:, 0].numpy()
    spec = lambda x: np.abs(np.fft.rfft(x)) ** 2  # noqa: E731
    ratio_db = 10 * np.log10(spec(shaped) / spec(flat))  # the same white noise: exactly |EQ|^2
    bins = ratio_db.shape[0]
    curve = np.interp(np.log(np.arange(1, bins + 1)), np.log(np.linspace(1, bins, 8)), eq_db)
    offset = ratio_db - curve  # a constant: both are scaled to the same power afterwards
    assert np.ptp(offset) < 0.01
    assert ratio_db[-100:].mean() - ratio_db[:3].mean() == pytest.approx(12.0, abs=0.3)
    assert np.corrcoef(flat, shaped)[0, 1] < -0.5


def test_auto_workers_use_the_cores_of_this_process(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data.workers_for("auto") == 15  # one core left to the training loop
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four processes share the node's cores
    assert data.workers_for("auto") == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert data.workers_for("auto") == 1
    assert data.workers_for(0) == 0 and data.workers_for(3) == 3
