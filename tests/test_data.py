import tarfile

import numpy as np
import pytest
import torch

from diffdenoise import data, noise
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


def stream(urls, **kw):
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
    return data.TrainStream(urls, **args)


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

    from diffdenoise import shard

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


def test_paired_shards_use_stored_noisy(tmp_path):
    import soundfile as sf

    from diffdenoise import shard
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
    b = next(iter(stream(urls, batch_size=2, batches=1)))
    assert torch.allclose(b["noisy"], -b["clean"], atol=1e-4)
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
    m = mixer(weights={"corpus": 1.0}, snr_min=5, snr_max=5)
    b = next(iter(stream(urls, mixer=m, noise_urls=noise_urls, batches=1)))
    for i in range(3):
        assert noise.snr_db(b["clean"][i, 0].numpy(), b["noisy"][i, 0].numpy()) == pytest.approx(
            5, abs=0.1
        )
    with pytest.raises(data.DataError, match="noise_shards"):
        next(iter(stream(urls, mixer=mixer(weights={"corpus": 1.0}), batches=1)))


def test_epoch_length_from_manifest(shards):
    urls = data.expand_urls(str(shards / "train-*.tar"))
    stats = data.manifest_stats(urls)
    assert stats["sample_rates"] == [16000] and stats["samples"] >= 4
    assert data.batches_per_epoch(stats["samples"], 2, 2) == stats["samples"] // 4


def test_mixer_augmentations_keep_the_snr_and_leave_a_share_clean():
    clean = np.sin(np.linspace(0, 900, 16000)).astype(np.float32) * 0.3
    m = mixer(clean_prob=0.3, eq_db=6.0, second_prob=0.5)
    results = [m(clean, np.random.default_rng(i)) for i in range(200)]
    untouched = [r for r in results if r[3] == float("inf")]
    assert 40 <= len(untouched) <= 80  # about 30 %
    assert all(np.array_equal(noisy, c) for noisy, c, _, _ in untouched)
    for noisy, c, _, snr in results:
        if snr != float("inf"):
            assert noise.snr_db(c, noisy) == pytest.approx(snr, abs=0.1)


def test_mixer_without_augmentations_draws_the_same_stream_as_before():
    clean = np.sin(np.linspace(0, 900, 4000)).astype(np.float32)
    plain = mixer()(clean, np.random.default_rng(7))
    off = mixer(clean_prob=0.0, eq_db=0.0, second_prob=0.0)(clean, np.random.default_rng(7))
    np.testing.assert_array_equal(plain[0], off[0])
    rng = np.random.default_rng(7)  # the original recipe's draws, in order
    kind = ["gaussian", "pink", "brown"][rng.choice(3, p=[1 / 3] * 3)]
    sound = noise.GENERATORS[kind](rng, 4000)
    expected = noise.mix_at_snr(clean, sound, float(rng.uniform(-5, 20)))
    np.testing.assert_array_equal(plain[0], expected)
