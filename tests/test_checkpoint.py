from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mt.checkpoint import (
    ModelDirError,
    commit_checkpoint,
    export_model_dir,
    load_model_dir,
    load_training_state,
    point_link,
    prune_checkpoints,
    save_model_dir,
    save_training_state,
)
from mt.config import ConfigError, DecodeConfig
from mt.train import Trainer
from mt.translator import Translator

from .conftest import tiny_config

SENTENCES = ["alpha bravo", "kilo lima echo golf", "hotel"]


@pytest.fixture(scope="module")
def model_dir(reverse_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(tiny_config(reverse_corpus), run, max_steps=30).fit()
    return run / "best"


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


def test_round_trip_gives_identical_translations(model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model_dir(model_dir)
    save_model_dir(tmp_path / "copy", loaded.model, loaded.config, loaded.src_tokenizer, loaded.tgt_tokenizer)
    first = Translator.from_dir(model_dir, device="cpu").translate(SENTENCES)
    second = Translator.from_dir(tmp_path / "copy", device="cpu").translate(SENTENCES)
    assert [t.text for t in first] == [t.text for t in second]
    assert [t.candidates[0].score for t in first] == [t.candidates[0].score for t in second]


def test_half_precision_weights_load_and_translate(model_dir: Path, tmp_path: Path) -> None:
    half = copy_of(model_dir, tmp_path)
    weights = load_file(str(half / "model.safetensors"))
    save_file({k: v.half().clone() for k, v in weights.items()}, str(half / "model.safetensors"))
    expected = [t.text for t in Translator.from_dir(model_dir, device="cpu").translate(SENTENCES)]
    assert [t.text for t in Translator.from_dir(half, device="cpu").translate(SENTENCES)] == expected


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match=r"model directory .*nowhere does not exist"):
        load_model_dir(tmp_path / "nowhere")


def test_missing_part_is_named(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_of(model_dir, tmp_path)
    (broken / "tgt.spm").unlink()
    with pytest.raises(ModelDirError, match=r"has no tgt.spm"):
        load_model_dir(broken)


def test_truncated_weights_are_refused(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_of(model_dir, tmp_path)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="not a readable safetensors file"):
        load_model_dir(broken)


def test_weights_that_do_not_match_the_config_are_refused(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_of(model_dir, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["model"]["dec_hidden"] += 8
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"does not match .*config.json.*shape"):
        load_model_dir(broken)


def test_weights_with_nan_are_refused(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_of(model_dir, tmp_path)
    weights = {k: v.clone() for k, v in load_file(str(broken / "model.safetensors")).items()}
    weights["decoder.embedded_proj.bias"][0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(ModelDirError, match="NaN"):
        load_model_dir(broken)


def test_a_pickle_in_place_of_the_weights_is_refused_without_unpickling(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_of(model_dir, tmp_path)
    weights = {k: v.clone() for k, v in load_file(str(broken / "model.safetensors")).items()}
    torch.save(weights, broken / "model.safetensors")
    with pytest.raises(ModelDirError, match="not a readable safetensors file"):
        load_model_dir(broken)


def test_invalid_config_is_named(model_dir: Path, tmp_path: Path) -> None:
    broken = copy_of(model_dir, tmp_path)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match=r"config.json is not a valid model config"):
        load_model_dir(broken)


def test_a_model_trained_under_older_rules_still_translates(model_dir: Path, tmp_path: Path) -> None:
    """Training settings that later versions refuse do not stop a trained model from loading to translate."""
    older = copy_of(model_dir, tmp_path)
    config = json.loads((older / "config.json").read_text())
    config["train"].update(threads=-1, eval_max_sentences=-5, seed=-1, lr_decay=1.0, clip_norm=-1.0)
    (older / "config.json").write_text(json.dumps(config))
    expected = Translator.from_dir(model_dir, device="cpu").translate(["alpha bravo"])[0].text
    assert Translator.from_dir(older, device="cpu").translate(["alpha bravo"])[0].text == expected
    config["decode"]["beam_size"] = 0  # what translating reads is still checked
    (older / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"decode\.beam_size must be between 1 and 100"):
        load_model_dir(older)


def test_export_averages_weights_and_stores_half_precision(reverse_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(reverse_corpus, eval_every=10), run, max_steps=20).fit()
    first, second = run / "checkpoints" / "step-0000010", run / "checkpoints" / "step-0000020"
    export_model_dir([first, second], tmp_path / "avg", half=True, decode=DecodeConfig(beam_size=3))
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    averaged = load_file(str(tmp_path / "avg" / "model.safetensors"))
    assert not (tmp_path / "avg" / "optimizer.safetensors").exists()
    for name, tensor in averaged.items():
        assert tensor.dtype == torch.float16
        assert torch.allclose(tensor.float(), ((a[name] + b[name]) / 2).half().float())
    exported = load_model_dir(tmp_path / "avg")
    assert exported.config.decode.beam_size == 3
    assert Translator.from_dir(tmp_path / "avg", device="cpu").decode.beam_size == 3


def test_export_refuses_to_average_different_models(model_dir: Path, reverse_corpus: Path, tmp_path: Path) -> None:
    config = tiny_config(reverse_corpus)
    config.model.dec_hidden = 24
    Trainer(config, tmp_path / "other", max_steps=2).fit()
    with pytest.raises(ModelDirError, match="cannot average"):
        export_model_dir([model_dir, tmp_path / "other" / "best"], tmp_path / "out")


def test_export_refuses_to_average_models_with_other_vocabularies(model_dir: Path, tmp_path: Path) -> None:
    swapped = tmp_path / "swapped"
    shutil.copytree(model_dir, swapped)
    (swapped / "src.spm").write_bytes((model_dir / "tgt.spm").read_bytes())  # the same sizes, other pieces
    (swapped / "tgt.spm").write_bytes((model_dir / "src.spm").read_bytes())
    with pytest.raises(ModelDirError, match="cannot average"):
        export_model_dir([model_dir, swapped], tmp_path / "out")


def test_exported_files_are_readable_by_everyone_whatever_the_umask(model_dir: Path, tmp_path: Path) -> None:
    """A container serves them as a user other than the one who exported them."""
    previous = os.umask(0o077)
    try:
        export_model_dir([model_dir], tmp_path / "out")
    finally:
        os.umask(previous)
    assert {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "out").iterdir()} == {
        name: 0o644 for name in ("model.safetensors", "config.json", "src.spm", "tgt.spm")
    }


def test_saving_a_step_twice_never_touches_the_live_checkpoint(tmp_path: Path) -> None:
    def write(content: str) -> Callable[[Path], None]:
        def to(folder: Path) -> None:
            (folder / "file").write_text(content)

        return to

    first = commit_checkpoint(tmp_path, 7, write("one"))
    point_link(tmp_path, "last", first)
    second = commit_checkpoint(tmp_path, 7, write("two"))
    assert first != second
    assert (tmp_path / "last" / "file").read_text() == "one"
    point_link(tmp_path, "last", second)
    prune_checkpoints(tmp_path, keep_last=1)
    assert (tmp_path / "last" / "file").read_text() == "two"
    assert not first.exists()


def test_export_keeps_a_model_directorys_other_files(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_model_dir([model_dir], out)
    (out / "README.md").write_text("model card")
    (out / "test.en.hyp").write_text("hypotheses")
    export_model_dir([model_dir], out, half=True)
    assert (out / "README.md").read_text() == "model card"
    assert (out / "test.en.hyp").read_text() == "hypotheses"
    assert load_file(str(out / "model.safetensors"))["decoder.embedded_proj.bias"].dtype == torch.float16


def test_export_refuses_to_replace_a_directory_that_is_not_a_model(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"  # --out models, meant as --out models/de-en
    (out / "de-en").mkdir(parents=True)
    (out / "notes.txt").write_text("precious")
    with pytest.raises(
        ModelDirError, match=r"is not a model directory \(it holds de-en, notes.txt, and no config.json\)"
    ):
        export_model_dir([model_dir], out)
    assert (out / "notes.txt").read_text() == "precious"
    assert (out / "de-en").is_dir()


def test_export_refuses_bad_decoding_defaults_before_writing(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_model_dir([model_dir], out)
    before = (out / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"decode\.beam_size must be between 1 and 100"):
        export_model_dir([model_dir], out, decode=DecodeConfig(beam_size=0))
    assert (out / "config.json").read_text() == before
    load_model_dir(out)


def test_export_replaces_an_existing_directory_but_not_a_link(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_model_dir([model_dir], out)
    export_model_dir([model_dir], out, half=True)
    assert load_file(str(out / "model.safetensors"))["decoder.embedded_proj.bias"].dtype == torch.float16
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(ModelDirError, match="is a link or a file"):
        export_model_dir([model_dir], tmp_path / "link")


def test_a_run_saved_with_more_gpus_resumes_on_fewer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each GPU's random state is saved; a machine with fewer GPUs restores those it has."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.get_rng_state() for _ in range(3)])
    save_training_state(tmp_path, optimizer, {"step": 7})
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    assert load_training_state(tmp_path, optimizer)["step"] == 7
    assert [len(states) for states in restored] == [1]
