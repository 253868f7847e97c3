"""Model directories and training checkpoints that never lose work and never unpickle.

A model directory holds everything needed to translate, and nothing executable:
    model.safetensors    weights (fp32 or fp16)
    config.json          the `Config` that built them
    src.spm, tgt.spm     SentencePiece models
A training checkpoint is a model directory plus the state to resume from:
    optimizer.safetensors   optimizer moments and RNG states, as tensors
    trainer.json            step, epoch, position in the epoch, scheduler and early-stopping state

A run folder keeps checkpoints as `checkpoints/step-NNNNNNN/`, each written under a temporary name
and renamed into place only when complete; `last` and `best` are symlinks swapped atomically
(rename of a new link over the old one). A kill at any moment leaves `last` pointing to a complete
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mt.config import Config, ConfigError, DecodeConfig
from mt.model import Seq2Seq
from mt.tokenizer import Tokenizer

WEIGHTS, CONFIG, SRC_SPM, TGT_SPM = "model.safetensors", "config.json", "src.spm", "tgt.spm"
OPTIMIZER, TRAINER = "optimizer.safetensors", "trainer.json"
TIED = "decoder.output.weight"


class ModelDirError(ValueError):
    """A model directory that cannot be loaded; the message names the directory and what is wrong."""


@dataclass
class LoadedModel:
    model: Seq2Seq
    config: Config
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer


def save_model_dir(
    path: Path,
    model: Seq2Seq,
    config: Config,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    *,
    half: bool = False,  # store the weights in fp16 (for shipping)
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    weights = model_weights(model)
    if half:
        weights = {name: tensor.half() for name, tensor in weights.items()}
    save_file(weights, str(path / WEIGHTS))
    config.save(path / CONFIG)
    src_tokenizer.save(path / SRC_SPM)
    tgt_tokenizer.save(path / TGT_SPM)


def model_weights(model: Seq2Seq) -> dict[str, torch.Tensor]:
    """The state dict to store: a tied output projection is the target embedding, stored once."""
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.decoder.output.weight is model.decoder.embedding.weight:
        del weights[TIED]
    return weights


def load_model_dir(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory, checking that its parts exist and agree with each other."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist")
    for name in (WEIGHTS, CONFIG, SRC_SPM, TGT_SPM):
        if not (path / name).is_file():
            raise ModelDirError(f"model directory {path} has no {name}")
    try:
        config = Config.from_dict(json.loads((path / CONFIG).read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ConfigError) as error:
        raise ModelDirError(f"{path / CONFIG} is not a valid model config: {error}") from error
    try:
        src_tokenizer, tgt_tokenizer = Tokenizer.load(path / SRC_SPM), Tokenizer.load(path / TGT_SPM)
    except (RuntimeError, OSError) as error:
        raise ModelDirError(f"{path}: a SentencePiece model does not load: {error}") from error
    model = Seq2Seq.from_config(config.model, src_vocab=len(src_tokenizer), tgt_vocab=len(tgt_tokenizer))
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as error:
        raise ModelDirError(f"{path / WEIGHTS} is not a readable safetensors file: {error}") from error
    _load_weights(model, weights, path)
    return LoadedModel(model.to(device).eval(), config, src_tokenizer, tgt_tokenizer)


def _load_weights(model: Seq2Seq, weights: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    tied = {TIED} if model.decoder.output.weight is model.decoder.embedding.weight else set()
    missing = sorted(set(expected) - set(weights) - tied)
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelDirError(
            f"{path / WEIGHTS} does not match {path / CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ModelDirError(
                f"{path / WEIGHTS} does not match {path / CONFIG}: {name} has shape {tuple(tensor.shape)}, "
                f"the config builds {tuple(expected[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise ModelDirError(f"{path / WEIGHTS}: {name} holds NaN or infinite values")
    model.load_state_dict(weights, strict=False)  # tied output weight comes with the embedding


def export_model_dir(
    sources: list[Path], out: Path, *, half: bool = False, decode: DecodeConfig | None = None
) -> LoadedModel:
    """Write a model directory for shipping: the weights of `sources` averaged (one source: copied),
    without optimizer state, in fp16 if `half`, with `decode` as its decoding defaults.

    Averaging the last checkpoints of a run is a cheap ensemble (Junczys-Dowmunt et al. 2016).
    """
    loaded = [load_model_dir(path) for path in sources]
    first = loaded[0]
    for other, path in zip(loaded[1:], sources[1:], strict=True):
        same_tokenizers = (other.src_tokenizer.model_proto, other.tgt_tokenizer.model_proto) == (
            first.src_tokenizer.model_proto,
            first.tgt_tokenizer.model_proto,
        )
        if other.config.model != first.config.model or not same_tokenizers:
            raise ModelDirError(f"{path} has another architecture or vocabulary than {sources[0]}: cannot average")
    all_weights = [model_weights(m.model) for m in loaded]
    averaged = {name: torch.stack([w[name] for w in all_weights]).mean(dim=0) for name in all_weights[0]}
    first.model.load_state_dict(averaged, strict=False)  # a tied output weight comes with the embedding
    if decode is not None:
        first.config.decode = decode
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ModelDirError(f"{out} is a link or a file; export writes a new directory")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, first.model, first.config, first.src_tokenizer, first.tgt_tokenizer, half=half)
    if out.exists():  # keep the previous export until the new one is in place
        os.replace(out, old)
    for file in tmp.iterdir():
        file.chmod(0o644)  # shipped files: readable by the non-root user of a container
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return first


# --- training checkpoints --------------------------------------------------------------------------


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, trainer: dict[str, Any]) -> None:
    """Optimizer moments and RNG states as tensors; everything else as JSON."""
    optim_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    scalars: dict[str, dict[str, float]] = {}
    for param_id, state in optim_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"optim.{param_id}.{key}"] = value.contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = float(value)
    save_file(tensors, str(path / OPTIMIZER))
    trainer = {**trainer, "optimizer": {"param_groups": optim_state["param_groups"], "scalars": scalars}}
    (path / TRAINER).write_text(json.dumps(trainer, indent=2) + "\n", encoding="utf-8")


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and RNG states saved by `save_training_state`; return the trainer dict."""
    try:
        trainer = json.loads((path / TRAINER).read_text(encoding="utf-8"))
        tensors = load_file(str(path / OPTIMIZER))
        saved = trainer.pop("optimizer")
        if not {"param_groups", "scalars"} <= set(saved):
            raise KeyError("optimizer.param_groups or optimizer.scalars")
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, TypeError, AttributeError) as error:
        raise ModelDirError(f"checkpoint {path} has no readable training state: {error!r}") from error
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optim."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = tensor
    for param_id, values in saved["scalars"].items():
        for key, value in values.items():
            state.setdefault(int(param_id), {})[key] = torch.tensor(value)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return dict(trainer)


def commit_checkpoint(run_dir: Path, step: int, write: Any) -> Path:
    """Write a checkpoint with `write(tmp_dir)` and move it into place as checkpoints/step-NNNNNNN.

    A step saved twice (a timed save, then the end-of-epoch one) gets a new name, step-NNNNNNN-2:
    the folder `last` points to is never deleted or overwritten.
    """
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    final, version = checkpoints / f"step-{step:07d}", 1
    while final.exists():
        version += 1
        final = checkpoints / f"step-{step:07d}-{version}"
    tmp = checkpoints / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, final)
    _fsync_dir(checkpoints)
    return final


def _fsync_dir(path: Path) -> None:
    """Persist a rename or new link in `path` (matters after a power cut, not after kill -9)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def point_link(run_dir: Path, name: str, target: Path) -> None:
    """Atomically make run_dir/name a relative symlink to target."""
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.relative_to(run_dir))
    os.replace(tmp, run_dir / name)
    _fsync_dir(run_dir)


def _checkpoint_order(path: Path) -> tuple[int, int]:
    """step-0000546 < step-0000546-2 < step-0000547."""
    parts = path.name.split("-")
    return int(parts[1]), int(parts[2]) if len(parts) > 2 else 1


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and the ones `last` and `best` point to."""
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"), key=_checkpoint_order)
    linked = {(run_dir / name).resolve() for name in ("last", "best") if (run_dir / name).exists()}
    for old in checkpoints[:-keep_last] if keep_last > 0 else checkpoints:
        if old.resolve() not in linked:
            shutil.rmtree(old, ignore_errors=True)
    for stale in (run_dir / "checkpoints").glob(".tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
