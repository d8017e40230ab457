import pytest

from diffdenoise.config import loading as config
from diffdenoise.config import schema
from diffdenoise.config.loading import ConfigError


def test_layers_apply_in_order(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("model:\n  channels: 8\n  depth: 2\noptim:\n  lr: 0.5\n")
    second = tmp_path / "b.yaml"
    second.write_text("model:\n  channels: 12\n")
    cfg = config.load([first, second], ["optim.lr=3e-4"])
    assert cfg.model.channels == 12  # the later file wins
    assert cfg.model.depth == 2  # untouched keys survive from the earlier file
    assert cfg.optim.lr == pytest.approx(3e-4)  # overrides win over files
    assert cfg.train.batch_size == schema.TrainConfig.batch_size  # schema default


def test_unknown_key_names_key_and_lists_group(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  chanels: 8\n")
    with pytest.raises(ConfigError) as err:
        config.load([bad])
    msg = str(err.value)
    assert "model.chanels" in msg and str(bad) in msg
    assert "channels" in msg and "depth" in msg and "skips" in msg
    assert "\n" not in msg


def test_unknown_group_in_override():
    with pytest.raises(ConfigError, match="unknown key 'optimizer'.*optim"):
        config.load([], ["optimizer.lr=1"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"model\.channels.*'abc'"):
        config.load([], ["model.channels=abc"])
    with pytest.raises(ConfigError, match=r"model\.skips"):
        config.load([], ["model.skips=maybe"])


def test_bad_choice_lists_options():
    with pytest.raises(ConfigError, match="train.mixed_precision.*no, fp16, bf16"):
        config.load([], ["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="noise.weights.violet"):
        config.load([], ["noise.weights.violet=1"])


def test_per_level_lists_must_match_depth():
    with pytest.raises(ConfigError, match="model.widths"):
        config.load([], ["model.depth=3", "model.widths=[8,16]"])


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        config.load([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="key=value"):
        config.load([], ["model.channels"])


def test_plain_round_trip():
    cfg = config.load([], ["model.channels=24"])
    plain = config.to_plain(cfg)
    assert isinstance(plain, dict) and plain["model"]["channels"] == 24
    assert config.from_plain(plain) == cfg


def test_config_is_read_only():
    cfg = config.load()
    with pytest.raises(Exception, match="read-only"):
        cfg.model.channels = 3


def test_unknown_validation_metric_is_named():
    with pytest.raises(ConfigError, match="'train.val_metrics' has 'pesq2'; choose from si_sdr"):
        config.load(["configs/tiny.yaml"], ["train.val_metrics=[si_sdr,pesq2]"])


def test_yaml_boolean_words_stay_strings_for_choice_keys():
    cfg = config.load(["configs/default.yaml"], ["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=-4", "'train.batch_size' is -4; it must be >= 1"),
        ("train.batch_size=0", "'train.batch_size' is 0; it must be >= 1"),
        ("data.segment=0", "'data.segment' is 0; it must be >= 1"),
        ("data.num_workers=-1", "'data.num_workers' is -1; it must be >= 0"),
        ("data.num_workers=lots", "'data.num_workers' is 'lots'; it must be >= 0 or auto"),
        ("train.sync_every=0", "'train.sync_every' is 0; it must be >= 1"),
        ("optim.lr=0", "'optim.lr' is 0.0; it must be > 0"),
        ("optim.beta2=1", "'optim.beta2' is 1.0; it must be >= 0 and < 1"),
        ("noise.clean_prob=1.5", "'noise.clean_prob' is 1.5; it must be >= 0 and <= 1"),
        (
            "model.spectral.suppress_scale=-0.5",
            "'model.spectral.suppress_scale' is -0.5; it must be >= 0 and <= 1",
        ),
        ("noise.reverb_rt60_max=9", "'noise.reverb_rt60_max' is 9.0; it must be >= 0.05 and <= 5"),
        ("noise.speed_perturb=0.6", "'noise.speed_perturb' is 0.6; it must be >= 0 and <= 0.5"),
        (
            "noise.reverb_rt60_min=2",
            "'noise.reverb_rt60_min' must not exceed 'noise.reverb_rt60_max'",
        ),
        ("model.strides=[4,0,4]", "'model.strides' is 0; it must be >= 1"),
        ("loss.resolutions=[[512,0,512]]", "each entry is [n_fft, hop, win] > 0"),
        ("model.spectral.win_ms=1", "'model.spectral.hop_ms' is 8; it must not exceed"),
    ],
)
def test_numbers_out_of_range_are_refused(override, message):
    extra = ["model.depth=3"] if override.startswith("model.strides") else []
    with pytest.raises(ConfigError) as err:
        config.load([], [*extra, override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_segment_shorter_than_the_model_can_use_names_the_minimum():
    with pytest.raises(ConfigError, match=r"'data.segment' is 50; this model needs at least 64"):
        config.load(["configs/tiny.yaml"], ["data.segment=50"])  # strides 4 x 4 x 4
    with pytest.raises(ConfigError, match=r"needs at least 1024 samples \(64.0 ms at 16000 Hz\)"):
        config.load(["configs/default.yaml"], ["data.sample_rate=16000", "data.segment=500"])
    with pytest.raises(ConfigError, match="'data.val_segment' is 1;"):
        config.load(["configs/tiny.yaml"], ["data.val_segment=1"])
    assert config.load(["configs/tiny.yaml"], ["data.segment=64"]).data.segment == 64


def test_a_config_builds_on_its_base(tmp_path):
    large = config.load(["configs/large.yaml"])
    default = config.load(["configs/default.yaml"])
    assert large.model.family == "spectral" and large.model.spectral.hidden == 768
    assert large.noise == default.noise and large.loss == default.loss
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="a.yaml: 'base' leads back to this file"):
        config.load([tmp_path / "a.yaml"])
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        config.load([tmp_path / "c.yaml"])


def test_every_noise_type_the_device_mixer_makes_is_a_config_choice():
    from diffdenoise.data import mixing

    assert schema.NOISE_TYPES == mixing.KINDS
    cfg = config.load([], ["noise.weights.tonal=1", "noise.weights.bursts=0.5"])
    assert cfg.noise.weights["tonal"] == 1 and cfg.noise.weights["bursts"] == 0.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("- a\n- b\n", "must be a mapping of sections (data:, model:, ...), not a list"),
        ("", "empty config (no keys); name a shipped config or add keys"),
        ("# only a comment\n", "empty config (no keys); name a shipped config or add keys"),
        ("42\n", "not valid YAML"),
    ],
)
def test_a_config_that_is_not_a_mapping_is_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load([path])
    assert str(err.value).startswith(f"{path}: {message}")


def test_train_refuses_a_list_config_in_one_line(tmp_path, capsys):
    from diffdenoise.training import loop as train

    (tmp_path / "list.yaml").write_text("- train\n")
    assert train.main([str(tmp_path / "list.yaml")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'list.yaml'}: must be a mapping of sections (data:, model:, ...), "
        "not a list"
    ]


def test_the_configuration_reference_is_the_schema():
    """docs/configuration.md is generated; a key added to the schema without its line of
    help, or a changed default, fails here until the page is written again."""
    from pathlib import Path

    from diffdenoise.config import help, reference

    leaves = [key for key, _ in reference.keys(schema.Config)]
    assert sorted(leaves) == sorted(help.HELP), "every schema key needs exactly one HELP line"
    page = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert page.read_text() == reference.render(), (
        "docs/configuration.md is stale: python -m diffdenoise.config.reference > "
        "docs/configuration.md"
    )
