"""Model directories and training checkpoints that never lose work and never unpickle.

A model directory holds everything needed to translate, and nothing executable:
    model.safetensors    weights (fp32 or fp16), with a SHA-256 of its tensors in the file's metadata
    config.json          the `Config` that built them
    src.spm, tgt.spm     SentencePiece models
A model directory is untrusted input: loading it parses JSON, safetensors and SentencePiece protobufs,
never a pickle. It is refused, with a message naming the file, when a part is missing, truncated,
corrupted (checksum), of the wrong dtype, holds NaN, disagrees with the config, is a link to a file
outside the directory, or when the directory holds a pickle (`model.pt`, `*.bin`, `*.pkl`...): a pickle
beside the weights means a wrong format or tampering, and it is never opened. Files written before
checksums existed still load, with a warning.
A training checkpoint is a model directory plus the state to resume from:
    optimizer.safetensors   optimizer moments and RNG states, as tensors
    trainer.json            step, epoch, position in the epoch, scheduler and early-stopping state

A run folder keeps checkpoints as `checkpoints/step-NNNNNNN/`, each written under a temporary name
and renamed into place only when complete; `last` and `best` are symlinks swapped atomically
(rename of a new link over the old one); old checkpoints are renamed away before they are deleted.
A kill at any moment leaves `last` pointing to a complete checkpoint, and no incomplete `step-*` folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mt.config import Config, ConfigError, DecodeConfig
from mt.decoder import upgrade_weights
from mt.model import Seq2Seq
from mt.tokenizer import Tokenizer, TokenizerError

WEIGHTS, CONFIG, SRC_SPM, TGT_SPM = "model.safetensors", "config.json", "src.spm", "tgt.spm"
MODEL_FILES = (WEIGHTS, CONFIG, SRC_SPM, TGT_SPM)  # what `save_model_dir` writes
OPTIMIZER, TRAINER = "optimizer.safetensors", "trainer.json"
TIED = "decoder.output.weight"
CHECKSUM = "sha256"  # key in a safetensors file's metadata; the value is `tensors_digest` of its tensors
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib")  # torch.save's and pickle's names
MAX_CONFIG_BYTES = 1 << 20  # a model's config.json is about 1 KB; refuse to parse megabytes of it

log = logging.getLogger(__name__)


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
    save_tensors(weights, path / WEIGHTS)
    config.save(path / CONFIG)
    src_tokenizer.save(path / SRC_SPM)
    tgt_tokenizer.save(path / TGT_SPM)


def model_weights(model: Seq2Seq) -> dict[str, torch.Tensor]:
    """The state dict to store: a tied output projection is the target embedding, stored once."""
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.decoder.output.weight is model.decoder.embedding.weight:
        del weights[TIED]
    return weights


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order.

    safetensors has no checksum of its own: a flipped bit in the data, or a header edited so that it
    still parses (a renamed tensor, swapped offsets), would load silently.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file that carries the checksum of its tensors in its metadata."""
    save_file(tensors, str(path), metadata={CHECKSUM: tensors_digest(tensors)})


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_tensors`; refuse one that does not parse or fails its checksum."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            names = file.keys()
            tensors = {name: file.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelDirError(f"{path} is not a readable safetensors file: {_one_line(error)}") from error
    expected = metadata.get(CHECKSUM)
    if expected is None:
        log.warning("%s carries no checksum (written by an older version): corruption cannot be detected", path)
    elif tensors_digest(tensors) != expected:
        raise ModelDirError(f"{path} fails its checksum: its tensors were corrupted or changed after it was written")
    return tensors


def load_model_dir(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory, checking that its parts exist, are intact and agree with each other."""
    path = Path(path)
    _check_dir(path)
    config = _read_config(path / CONFIG)
    src_tokenizer, tgt_tokenizer = _read_tokenizer(path / SRC_SPM), _read_tokenizer(path / TGT_SPM)
    weights = read_tensors(path / WEIGHTS)
    try:
        weights = upgrade_weights(weights)
    except (KeyError, RuntimeError, IndexError, ValueError) as error:  # parts missing, or shapes that do not fit
        raise ModelDirError(
            f"{path / WEIGHTS} holds weights in the older layout that do not fit together: {error!r}"
        ) from error
    for name, tensor in weights.items():
        if tensor.dtype not in WEIGHT_DTYPES:
            raise ModelDirError(f"{path / WEIGHTS}: {name} is {tensor.dtype}; weights are float32, float16 or bfloat16")
    vocab = {"src_vocab": len(src_tokenizer), "tgt_vocab": len(tgt_tokenizer)}
    try:
        with torch.device("meta"):  # shapes only: a config asking for a huge model allocates nothing
            skeleton = Seq2Seq.from_config(config.model, **vocab)
    except RuntimeError as error:  # sizes whose product overflows
        raise ModelDirError(f"{path / CONFIG}: the model it describes cannot be built: {error}") from error
    _check_weights(skeleton, weights, path)
    model = Seq2Seq.from_config(config.model, **vocab)
    model.load_state_dict(weights, strict=False)  # tied output weight comes with the embedding
    return LoadedModel(model.to(device).eval(), config, src_tokenizer, tgt_tokenizer)


def _check_dir(path: Path) -> None:
    """Refuse a directory that holds a pickle, or whose parts are missing or lie outside it."""
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist")
    for entry in sorted(path.iterdir()):
        if _is_pickle(entry):
            raise ModelDirError(
                f"model directory {path} holds {entry.name}, a pickle file: pickles can run code when loaded, "
                "so it is never opened, and a directory holding one (a wrong format, or tampering) is refused"
            )
    root = path.resolve()
    for name in (WEIGHTS, CONFIG, SRC_SPM, TGT_SPM):
        part = path / name
        try:
            target = part.resolve()
        except (RuntimeError, OSError):  # RuntimeError: a link loop, before Python 3.13
            raise ModelDirError(
                f"model directory {path}: {name} is a link that never reaches a file (a loop)"
            ) from None
        if part.is_symlink() and root not in target.parents:
            raise ModelDirError(
                f"model directory {path}: {name} is a link to {os.readlink(part)}, outside the directory; "
                "a model directory must hold its own files"
            )
        if not part.exists():
            raise ModelDirError(f"model directory {path} has no {name}")
        if not part.is_file():
            raise ModelDirError(f"model directory {path}: {name} is not a regular file")


def _is_pickle(entry: Path) -> bool:
    """A pickle by name (torch.save's and pickle's usual suffixes) or by content: a protocol 2-5 header, or
    a zip archive holding a data.pkl (torch.save's format)."""
    if entry.suffix.lower() in PICKLE_SUFFIXES:
        return True
    if entry.name in (CONFIG, SRC_SPM, TGT_SPM, TRAINER) or entry.suffix == ".safetensors":
        return False  # parsed by their own loaders; a safetensors header length may begin with the same bytes
    try:
        if not stat.S_ISREG(entry.lstat().st_mode):  # never open a FIFO or a device, nor follow a link
            return False
        with entry.open("rb") as handle:
            head = handle.read(4)
            if head == b"PK\x03\x04":  # only the archive's list of names is read
                with zipfile.ZipFile(handle) as archive:
                    return any(name.rsplit("/", 1)[-1] == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False  # unreadable, so it cannot be loaded either
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _read_config(file: Path) -> Config:
    try:
        size = file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"it is {size:,} bytes, where a model config is about 1 KB")
        raw = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(raw), "number")
            raise ConfigError(f"it holds a JSON {kind}, not an object of config sections")
        config = Config.from_dict(raw)
        config.validate(training=False)
    except OSError as error:
        raise ModelDirError(f"{file} cannot be read: {error.strerror or error}") from error
    except (ValueError, RecursionError) as error:  # JSON, UTF-8 and config errors are ValueErrors
        raise ModelDirError(f"{file} is not a valid model config: {_one_line(error)}") from error
    return config


def _read_tokenizer(file: Path) -> Tokenizer:
    try:
        return Tokenizer.load(file)
    except TokenizerError as error:
        raise ModelDirError(_one_line(error)) from error
    except OSError as error:
        raise ModelDirError(f"{file} cannot be read: {error.strerror or error}") from error


def _check_weights(skeleton: Seq2Seq, weights: dict[str, torch.Tensor], path: Path) -> None:
    """The weights have the names and shapes that the config and vocabularies build, and finite values."""
    expected = skeleton.state_dict()
    tied = {TIED} if skeleton.decoder.output.weight is skeleton.decoder.embedding.weight else set()
    missing = sorted(set(expected) - set(weights) - tied)
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelDirError(
            f"{path / WEIGHTS} does not match {path / CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ModelDirError(
                f"{path / WEIGHTS} does not match {path / CONFIG} and the vocabularies in {SRC_SPM}, {TGT_SPM}: "
                f"{name} has shape {tuple(tensor.shape)}, they build {tuple(expected[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise ModelDirError(f"{path / WEIGHTS}: {name} holds NaN or infinite values")


def _one_line(error: BaseException) -> str:
    """A library's message on one line, for a one-line error on the command line."""
    return " ".join(str(error).split())


def export_model_dir(
    sources: list[Path], out: Path, *, half: bool = False, decode: DecodeConfig | None = None
) -> LoadedModel:
    """Write a model directory for shipping: the weights of `sources` averaged (one source: copied),
    without optimizer state, in fp16 if `half`, with `decode` as its decoding defaults.

    An existing `out` must be a model directory (or empty): its model files are replaced, and whatever
    else it holds (a model card, hypotheses) is kept. Any other directory is refused, not deleted.
    Averaging the last checkpoints of a run is a cheap ensemble (Junczys-Dowmunt et al. 2016).
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ModelDirError(f"{out} is a link or a file; export writes a new directory")
    kept = [entry for entry in out.iterdir() if entry.name not in MODEL_FILES] if out.is_dir() else []
    if kept and not (out / CONFIG).is_file():
        names = ", ".join(sorted(entry.name for entry in kept)[:5])
        raise ModelDirError(
            f"{out} exists and is not a model directory (it holds {names}, and no {CONFIG}): "
            "export replaces only a model directory; choose another --out"
        )
    if decode is not None:
        decode.validate()  # before anything is written: a model that will not load must not replace one that does
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
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, first.model, first.config, first.src_tokenizer, first.tgt_tokenizer, half=half)
    for entry in kept:  # copied, not moved: until the swap below, `out` stays whole
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, tmp / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
    if out.exists():  # keep the previous export until the new one is in place
        os.replace(out, old)
    for name in MODEL_FILES:
        (tmp / name).chmod(0o644)  # shipped files: readable by the non-root user of a container
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
    save_tensors(tensors, path / OPTIMIZER)
    trainer = {**trainer, "optimizer": {"param_groups": optim_state["param_groups"], "scalars": scalars}}
    (path / TRAINER).write_text(json.dumps(trainer, indent=2) + "\n", encoding="utf-8")


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and RNG states saved by `save_training_state`; return the trainer dict."""
    try:
        trainer = json.loads((path / TRAINER).read_text(encoding="utf-8"))
        saved = trainer.pop("optimizer")
        if not {"param_groups", "scalars"} <= set(saved):
            raise KeyError("optimizer.param_groups or optimizer.scalars")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelDirError(f"checkpoint {path} has no readable training state: {error!r}") from error
    tensors = read_tensors(path / OPTIMIZER)
    try:
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            if name.startswith("optim."):
                _, param_id, key = name.split(".", 2)
                state.setdefault(int(param_id), {})[key] = tensor
        for param_id, values in saved["scalars"].items():
            for key, value in values.items():
                state.setdefault(int(param_id), {})[key] = torch.tensor(value)
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        rng = tensors["rng.torch"]
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as error:
        raise ModelDirError(f"checkpoint {path}: the optimizer state does not fit the model: {error!r}") from error
    torch.set_rng_state(rng)
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():  # a run saved with more GPUs than this machine has
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
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
    """Delete all but the newest `keep_last` checkpoints and the ones `last` and `best` point to.

    A checkpoint is renamed to a hidden name before it is deleted: a kill halfway through deleting
    leaves a `.tmp-*` folder (removed here next time), never a `step-*` folder with files missing.
    """
    checkpoints = run_dir / "checkpoints"
    for stale in checkpoints.glob(".tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    for stale_link in run_dir.glob(".*.tmp-*"):  # a `last` or `best` link a killed run did not move into place
        if stale_link.is_symlink():
            stale_link.unlink()
    ordered = sorted(checkpoints.glob("step-*"), key=_checkpoint_order)
    linked = {(run_dir / name).resolve() for name in ("last", "best") if (run_dir / name).exists()}
    for old in ordered[:-keep_last] if keep_last > 0 else ordered:
        if old.resolve() not in linked:
            doomed = checkpoints / f".tmp-pruned-{old.name}-{os.getpid()}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
