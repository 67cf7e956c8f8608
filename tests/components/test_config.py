from pathlib import Path

import pytest

from longdoc.components.core.config import ConfigError, Params, load_params

REPO = Path(__file__).resolve().parents[2]


def test_params_yaml_matches_defaults():
    # The committed params.yaml documents every default: the two must not drift apart.
    assert load_params(REPO / "params.yaml") == Params()


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_params("params.yaml") == Params()


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.lr=-1", "pretrain.lr: Input should be greater than 0"),
        ("pretrain.lr=abc", "pretrain.lr: Input should be a valid number"),
        ("pretrain.learning_rate=1", "pretrain.learning_rate: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("model.hidden_size=130", "hidden_size must be divisible by num_attention_heads"),
        ("model.attention_window=63", "attention_window must be even"),
        ("tokenize.val_fraction=1.5", "tokenize.val_fraction: Input should be less than 1"),
        ("ingest.sources=[]", "ingest.sources: List should have at least 1 item"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_params(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("sample: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_params(bad)


def test_overrides_are_typed():
    p = load_params(None, ["pretrain.steps=7", "pretrain.base=null", "ingest.sources=[a, b]"])
    assert p.pretrain.steps == 7 and p.pretrain.base is None
    assert p.ingest.sources == [Path("a"), Path("b")]


def test_malformed_override():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_params(None, ["pretrain.steps"])
