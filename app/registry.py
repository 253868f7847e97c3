"""The models a server holds: every model directory under the models folder, keyed by language pair."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mt.checkpoint import CONFIG, ModelDirError
from mt.translator import Translator, resolve_device

log = logging.getLogger(__name__)

LANGUAGE_NAMES = {"cs": "Czech", "de": "German", "en": "English", "fr": "French"}


class ModelsError(RuntimeError):
    """The models folder cannot be served; the message names the directory and what is wrong."""


@dataclass
class ServedModel:
    source: str
    target: str
    path: Path
    translator: Translator


def load_models(
    models_dir: str | Path, device: str, *, int8: bool = False, bf16: bool = False
) -> dict[tuple[str, str], ServedModel]:
    """Load every non-hidden directory under `models_dir`, each of which must be a model directory, once,
    in int8 or bf16 if asked (`Translator.from_dir`)."""
    folder = Path(models_dir)
    where = "" if folder.is_absolute() else f" ({folder.absolute()})"
    hint = "pass --models DIR (MT_MODELS_DIR), the folder that holds one directory per model, as models/ does"
    if not folder.is_dir():
        raise ModelsError(f"models folder {folder}{where} does not exist: {hint}")
    candidates = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not candidates:
        raise ModelsError(f"models folder {folder}{where} holds no model directory (a folder with {CONFIG}): {hint}")
    try:
        resolved = str(resolve_device(device, int8=int8))
    except ValueError as error:
        raise ModelsError(str(error)) from error
    models: dict[tuple[str, str], ServedModel] = {}
    for path in candidates:
        try:
            translator = Translator.from_dir(path, device=resolved, int8=int8, bf16=bf16)
        except (ModelDirError, ValueError, OSError) as error:
            raise ModelsError(f"cannot serve {path}: {error}") from error
        pair = (translator.source_lang, translator.target_lang)
        if pair in models:
            raise ModelsError(f"{path} and {models[pair].path} both translate {pair[0]}->{pair[1]}")
        models[pair] = ServedModel(pair[0], pair[1], path, translator)
        precision = "int8" if int8 else "bf16" if bf16 else "fp32"
        log.info("loaded %s (%s->%s) on %s in %s", path, pair[0], pair[1], resolved, precision)
    return models


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)
