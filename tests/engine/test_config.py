"""Config loading: declared keys <- YAML <- --key value, each value checked against its declared type, and
the one-line errors bad input gets (naming the key and the expected type, or the closest declared key)."""
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Tuple

import pytest

from wslfast.engine import ConfigError, config_keys, load_config, parse_overrides
from wslfast.engine.config import describe_type, expected_text


@dataclass
class Keys:
    SECTIONS: ClassVar[dict] = {"arch": "model"}  # not a key

    arch: str = "resnext_tiny"
    """the model"""
    batch_size: int = 32
    """images per rank,
    on two lines"""
    lr: Optional[float] = None
    """peak LR; null -> the rule"""
    momentum: float = 0.9
    nesterov: bool = True
    total_images: int = 100_000
    steps: Optional[int] = None
    milestones: Tuple[int, ...] = (1, 2)
    betas: Optional[Tuple[float, float]] = None
    amp: Literal["none", "bf16"] = "none"
    out: str = "runs/default"
    weight_decay: float = 1e-4


DEFAULTS = {"arch": "resnext_tiny", "batch_size": 32, "lr": None, "momentum": 0.9, "nesterov": True,
            "total_images": 100_000, "steps": None, "milestones": [1, 2], "betas": None, "amp": "none",
            "out": "runs/default", "weight_decay": 1e-4}


def test_defaults_come_back_as_plain_values():
    cfg = load_config(Keys, [])
    assert {k: cfg[k] for k in DEFAULTS} == DEFAULTS and set(cfg) == set(DEFAULTS) | {"config"}
    assert cfg.batch_size == 32 and cfg.config is None


def test_keys_are_declared_once_with_their_help():
    keys = {k.name: k for k in config_keys(Keys)}
    assert list(keys) == list(DEFAULTS)  # declaration order; SECTIONS (a ClassVar) is not a key
    assert keys["batch_size"].help == "images per rank, on two lines" and keys["momentum"].help == ""
    assert keys["lr"].type == Optional[float] and keys["lr"].default is None


def test_a_key_without_default_is_a_declaration_error():
    @dataclass
    class Bad:
        lr: float

    with pytest.raises(TypeError, match="needs a default"):
        config_keys(Bad)


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("arch: resnext101_32x16d\nbatch-size: 24\nlr: 3.15\nnesterov: false\nbetas: [0.9, 0.95]\n")
    cfg = load_config(Keys, ["--config", str(path), "--batch-size", "48", "--momentum=0.8"])
    assert cfg.arch == "resnext101_32x16d" and cfg.lr == 3.15 and cfg.nesterov is False
    assert cfg.batch_size == 48 and cfg.momentum == 0.8 and cfg.config == str(path) and cfg.betas == [0.9, 0.95]


@pytest.mark.parametrize("value,expected", [("1e6", 1_000_000), ("3_500", 3500), ("7", 7), ("2.0", 2),
                                            ("-3", -3), ("12345678901234567891", 12345678901234567891)])
def test_ints_accept_integral_spellings(value, expected):
    cfg = load_config(Keys, ["--total-images", value])
    assert cfg.total_images == expected and type(cfg.total_images) is int


def test_yaml_numbers(tmp_path):
    path = tmp_path / "n.yaml"
    # YAML 1.1 reads 1e-3 (no dot) as a string and 2.0e9 as a float: both are numbers here
    path.write_text("lr: 1e-3\ntotal_images: 2.0e9\nsteps: 3_600\nweight_decay: 5\n")
    cfg = load_config(Keys, ["--config", str(path)])
    assert cfg.lr == 1e-3 and cfg.total_images == 2_000_000_000 and cfg.steps == 3600
    assert type(cfg.total_images) is int and type(cfg.weight_decay) is float and cfg.weight_decay == 5.0


@pytest.mark.parametrize("value,expected", [("true", True), ("no", False), ("0", False), ("YES", True),
                                            ("1", True), ("off", False)])
def test_bools(value, expected):
    assert load_config(Keys, ["--nesterov", value]).nesterov is expected


def test_bare_flag_switches_bool_on_and_lists_parse():
    cfg = load_config(Keys, ["--nesterov", "false", "--nesterov", "--milestones",
                             "[3, 5, 8]"])
    assert cfg.nesterov is True and cfg.milestones == [3, 5, 8]


def test_optional_keys_take_null_or_their_type():
    assert load_config(Keys, ["--lr", "0.4"]).lr == 0.4
    assert load_config(Keys, ["--lr", "1e30"]).lr == 1e30 and load_config(Keys, ["--lr", "7"]).lr == 7.0
    cfg = load_config(Keys, ["--lr", "0.1", "--lr", "null", "--steps", "~", "--betas", "[0.9, 0.95]"])
    assert cfg.lr is None and cfg.steps is None and cfg.betas == [0.9, 0.95]
    assert load_config(Keys, ["--out", "null"]).out == "null"  # a string key keeps the word


@pytest.mark.parametrize("argv,line", [
    (["--lr", "abc"], "command line: key 'lr': expected a number or null, got 'abc'"),
    (["--lr", "auto"], "key 'lr': expected a number or null, got 'auto'"),
    (["--betas", "0.9"], "key 'betas': expected a list of 2 numbers like [0.9, 0.999] or null, got '0.9'"),
    (["--betas", "[0.9]"], "key 'betas': expected a list of 2 numbers"),
    (["--betas", "[0.9, 0.95, 0.99]"], "key 'betas': expected a list of 2 numbers"),
    (["--steps", "x"], "key 'steps': expected an integer or null, got 'x'"),
    (["--steps", "2.5"], "key 'steps': expected an integer or null, got '2.5'"),
    (["--batch-size", "3.5"], "key 'batch_size': expected an integer, got '3.5'"),
    (["--batch-size", "many"], "key 'batch_size': expected an integer, got 'many'"),
    (["--total-images", "null"], "key 'total_images': expected an integer, got 'null'"),
    (["--nesterov", "maybe"], "key 'nesterov': expected true or false, got 'maybe'"),
    (["--momentum", "fast"], "key 'momentum': expected a number, got 'fast'"),
    (["--momentum", "nan"], "key 'momentum': expected a number, got 'nan'"),
    (["--milestones", "7"], "key 'milestones': expected a list of integers"),
    (["--amp", "fp16"], "key 'amp': expected one of none, bf16, got 'fp16'"),
    (["--batch-sise", "3"], "command line: unknown key 'batch-sise' (did you mean 'batch-size'?)"),
    (["--qwerty", "3"], "command line: unknown key 'qwerty'"),
    (["lr", "0.1"], "command line: expected --key value, got 'lr'"),
    (["--config", "/nonexistent/x.yaml"], "config file '/nonexistent/x.yaml' does not exist"),
])
def test_bad_input_is_one_line_naming_key_and_type(argv, line):
    with pytest.raises(ConfigError) as e:
        load_config(Keys, argv)
    assert line in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,line", [
    ("- a\n- b\n", "must hold a mapping"),
    ("arch: [unclosed\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ("learning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ("batch_sise: 8\n", "unknown key 'batch_sise' (did you mean 'batch_size'?)"),
    ("batch_size: {a: 1}\n", "key 'batch_size': expected an integer, got {'a': 1}"),
    ("batch_size: null\n", "key 'batch_size': expected an integer, got null"),
    ("batch_size: true\n", "key 'batch_size': expected an integer, got True"),
    ("lr: abc\n", "key 'lr': expected a number or null, got 'abc'"),
    ("lr: [0.1]\n", "key 'lr': expected a number or null, got [0.1]"),
    ("betas: 0.9\n", "key 'betas': expected a list of 2 numbers like [0.9, 0.999] or null, got 0.9"),
    ("steps: x\n", "key 'steps': expected an integer or null, got 'x'"),
    ("out: [1, 2]\n", "key 'out': expected a string, got [1, 2]"),
    ("amp: null\n", "key 'amp': expected one of none, bf16, got null"),
    ("nesterov: 2\n", "key 'nesterov': expected true or false, got 2"),
])
def test_bad_yaml_files(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(Keys, ["--config", str(path)])
    assert line in str(e.value) and "\n" not in str(e.value)
    if "key '" in line:
        assert str(e.value).startswith(f"config file {str(path)!r}: ")


def test_empty_yaml_is_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(Keys, ["--config", str(path)]).batch_size == 32


def test_parse_overrides_pairs():
    assert parse_overrides(["--a=1", "--b", "x y", "--c"]) == (None, [("a", "1"), ("b", "x y"), ("c", "true")])
    assert parse_overrides(["--lr", "-0.5"]) == (None, [("lr", "-0.5")])
    assert parse_overrides(["--config=a.yaml", "--lr", "1"]) == ("a.yaml", [("lr", "1")])


@pytest.mark.parametrize("tp,short,words", [
    (int, "int", "an integer"), (float, "float", "a number"), (bool, "bool", "true or false"),
    (str, "str", "a string"), (Optional[float], "float | null", "a number or null"),
    (Optional[Tuple[float, float]], "[float, float] | null", "a list of 2 numbers like [0.9, 0.999] or null"),
    (Tuple[int, ...], "[int, ...]", "a list of integers like [1, 2]"),
    (Literal["step", "cosine"], "step | cosine", "one of step, cosine"),
])
def test_type_names(tp, short, words):
    assert describe_type(tp) == short and expected_text(tp) == words
