"""Config loading: defaults <- YAML <- --key value, type conversion and the errors bad input gets."""
import pytest

from wslfast.engine import ConfigError, load_config, parse_overrides

DEFAULTS = {"arch": "resnext_tiny", "batch_size": 32, "lr": None, "momentum": 0.9, "nesterov": True,
            "total_images": 100_000, "milestones": [1, 2], "out": "runs/default", "weight_decay": 1e-4}


def test_defaults_come_back_unchanged():
    cfg = load_config(DEFAULTS, [])
    assert {k: cfg[k] for k in DEFAULTS} == DEFAULTS
    assert cfg.batch_size == 32 and cfg.config is None


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("arch: resnext101_32x16d\nbatch-size: 24\nlr: 3.15\nnesterov: false\n")
    cfg = load_config(DEFAULTS, ["--config", str(path), "--batch-size", "48", "--momentum=0.8"])
    assert cfg.arch == "resnext101_32x16d" and cfg.lr == 3.15 and cfg.nesterov is False
    assert cfg.batch_size == 48 and cfg.momentum == 0.8 and cfg.config == str(path)


@pytest.mark.parametrize("value,expected", [("1e6", 1_000_000), ("3_500", 3500), ("7", 7), ("2.0", 2)])
def test_ints_accept_integral_spellings(value, expected):
    cfg = load_config(DEFAULTS, ["--total-images", value])
    assert cfg.total_images == expected and type(cfg.total_images) is int


@pytest.mark.parametrize("value,expected", [("true", True), ("no", False), ("0", False), ("YES", True)])
def test_bools(value, expected):
    assert load_config(DEFAULTS, ["--nesterov", value]).nesterov is expected


def test_bare_flag_switches_bool_on_and_lists_parse():
    cfg = load_config({**DEFAULTS, "nesterov": False}, ["--nesterov", "--milestones", "[3, 5, 8]"])
    assert cfg.nesterov is True and cfg.milestones == [3, 5, 8]


def test_none_default_takes_yaml_scalar_and_null_turns_off():
    assert load_config(DEFAULTS, ["--lr", "0.4"]).lr == 0.4
    assert load_config(DEFAULTS, ["--lr", "1e30"]).lr == 1e30 and load_config(DEFAULTS, ["--lr", "7"]).lr == 7
    assert load_config(DEFAULTS, ["--lr", "auto"]).lr == "auto"
    assert load_config(DEFAULTS, ["--total-images", "null"]).total_images is None


@pytest.mark.parametrize("argv,match", [
    (["--batch-sise", "3"], "did you mean 'batch-size'"),
    (["--batch-size", "3.5"], "expected an integer"),
    (["--batch-size", "many"], "expected an integer"),
    (["--nesterov", "maybe"], "expected true/false"),
    (["--momentum", "fast"], "expected a number"),
    (["--milestones", "7"], "expected a list"),
    (["lr", "0.1"], "expected --key value"),
    (["--config", "/nonexistent/x.yaml"], "does not exist"),
])
def test_bad_input_is_a_clear_error(argv, match):
    with pytest.raises(ConfigError, match=match):
        load_config(DEFAULTS, argv)


@pytest.mark.parametrize("text,match", [("- a\n- b\n", "mapping"), ("arch: [unclosed\n", "not valid YAML"),
                                        ("learning_rate: 0.1\n", "unknown key"), ("batch_size: {a: 1}\n", "integer")])
def test_bad_yaml_files(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(DEFAULTS, ["--config", str(path)])


def test_empty_yaml_is_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(DEFAULTS, ["--config", str(path)]).batch_size == 32


def test_parse_overrides_pairs():
    assert parse_overrides(["--a=1", "--b", "x y", "--c"]) == (None, [("a", "1"), ("b", "x y"), ("c", "true")])
    assert parse_overrides(["--lr", "-0.5"]) == (None, [("lr", "-0.5")])
