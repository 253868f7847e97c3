from __future__ import annotations

from pathlib import Path

import pytest

from mt.config import Config, ConfigError, set_field


def test_yaml_file_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  cell: lstm\n  dec_hidden: 128\ntrain:\n  lr: 0.0005\n", encoding="utf-8")
    config = Config.load(path)
    assert (config.model.cell, config.model.dec_hidden, config.train.lr) == ("lstm", 128, 0.0005)
    assert config.model.emb_size == Config().model.emb_size


def test_command_line_strings_are_converted_to_the_field_type() -> None:
    config = Config()
    set_field(config, "train.lr", "0.002")
    set_field(config, "model.tie_embeddings", "false")
    set_field(config, "train.max_epochs", "3")
    assert (config.train.lr, config.model.tie_embeddings, config.train.max_epochs) == (0.002, False, 3)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.cell", "transformer", "must be one of"),
        ("train.max_epochs", "many", "must be an integer"),
        ("train.nonsense", "1", "unknown config key 'train.nonsense'"),
        ("training.lr", "1", "unknown config section 'training'"),
        ("model.tie_embeddings", "maybe", "true or false"),
        ("decode.beam_size", float("inf"), "must be an integer, got inf"),  # 1e999 in a config.json
    ],
)
def test_bad_overrides_say_which_key_and_why(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        set_field(Config(), key, value)


def test_round_trip_through_json(tmp_path: Path) -> None:
    config = Config()
    config.model.cell = "lstm"
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == config


def test_invalid_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.yaml"):
        Config.load(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("decode.beam_size", 0, "decode.beam_size must be between 1 and 100"),
        ("decode.beam_size", 100_000, "decode.beam_size must be between 1 and 100"),
        ("decode.batch_size", 0, "decode.batch_size must be at least 1"),
        ("decode.n_best", 9, "decode.n_best must be between 1 and decode.beam_size"),
        ("train.batch_tokens", 0, "train.batch_tokens must be at least 1"),
        ("model.dropout", 1.5, r"model.dropout must be in \[0, 1\)"),
        ("decode.max_len_a", float("inf"), "decode.max_len_a must be between 0 and 100"),
        ("decode.max_len_b", 10**9, "decode.max_len_a must be between 0 and 100 and decode.max_len_b"),
        ("decode.length_penalty", float("nan"), "decode.length_penalty must be between 0 and 10"),
        # a negative clip norm flips every gradient: training would climb the loss
        ("train.clip_norm", -1.0, "train.clip_norm must be positive and finite, got -1.0"),
        ("train.clip_norm", float("nan"), "train.clip_norm must be positive and finite, got nan"),
        ("train.save_every_minutes", float("nan"), "train.save_every_minutes must be positive"),
        ("train.weight_decay", -0.1, "train.weight_decay must be >= 0"),
        ("train.lr_decay", 0.0, r"train.lr_decay must be in \(0, 1\)"),
        ("train.lr_decay", 1.0, r"train.lr_decay must be in \(0, 1\)"),  # torch's scheduler refuses 1
        ("data.max_ratio", 0.5, "data.max_ratio must be at least 1"),
        ("vocab.character_coverage", 0.0, r"vocab.character_coverage must be in \(0, 1\]"),
        ("vocab.sampling_alpha", float("inf"), "vocab.sampling_alpha must be >= 0 and finite, got inf"),
        ("train.lr", 5e-6, r"train.lr \(5e-06\) is below train.min_lr \(1e-05\), where training stops"),
        # -5 validated on all but the last 5 sentences; -1 never validated nor saved until the end
        ("train.eval_max_sentences", -5, "train.eval_max_sentences must be at least 0, got -5"),
        ("train.eval_every", -1, "train.eval_every must be at least 0, got -1"),
        ("train.threads", -3, "train.threads must be at least 0, got -3"),
        # SentencePiece's generator takes 32 bits: a date such as 20251201 crashed after the tokenizers trained
        ("train.seed", -1, r"train.seed must be between 0 and 2\*\*32 - 1, got -1"),
        ("train.seed", 2**32, r"train.seed must be between 0 and 2\*\*32 - 1, got 4294967296"),
    ],
)
def test_values_no_run_can_use_are_refused_by_name(key: str, value: object, message: str) -> None:
    config = Config()
    set_field(config, key, value)
    with pytest.raises(ConfigError, match=message):
        config.validate()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_files_load_and_validate(path: Path) -> None:
    config = Config.load(path)
    config.validate()
    assert f"{config.data.src}-{config.data.tgt}" == path.stem


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# Deutsch \u00e4 Englisch\ntrain:\n  lr: 0.001\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config file .*latin1\.yaml is not UTF-8 text"):
        Config.load(path)
