"""The `mt` command: train, translate, evaluate, export and serve.

Every config field is also a flag, named `--section.field` (`--train.lr 0.0005`,
`--model.cell lstm`); `mt train --help` lists them with their defaults.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import re
import sys
import typing
from pathlib import Path

from mt.checkpoint import CONFIG, MODEL_FILES, ModelDirError
from mt.config import Config, ConfigError, DecodeConfig, get_field, section_fields, section_names, set_field
from mt.data import CorpusError, read_text_lines
from mt.distributed import World, leave

if typing.TYPE_CHECKING:
    from mt.translator import Translation

log = logging.getLogger("mt")


def _add_config_flags(parser: argparse.ArgumentParser, sections: list[str], *, model_defaults: bool = False) -> None:
    """--section.key flags; with `model_defaults`, an unset one keeps what the model directory stores."""
    defaults = Config()
    for section in sections:
        group = parser.add_argument_group(f"{section} settings")
        for name, kind in section_fields(section).items():
            default = getattr(getattr(defaults, section), name)
            choices = list(typing.get_args(kind)) if typing.get_origin(kind) is typing.Literal else None
            group.add_argument(
                f"--{section}.{name}",
                dest=f"cfg:{section}.{name}",
                metavar=kind.__name__.upper() if isinstance(kind, type) else "CHOICE",
                choices=choices,
                default=None,
                help=f"(default: the model's own; {default} in a new config)"
                if model_defaults
                else f"(default: {default})",
            )


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return {key[4:]: value for key, value in vars(args).items() if key.startswith("cfg:") and value is not None}


def _apply(config: Config, overrides: dict[str, str]) -> Config:
    for dotted, value in overrides.items():
        set_field(config, dotted, value)
    return config


def _add_decode_flags(parser: argparse.ArgumentParser) -> None:
    _add_config_flags(parser, ["decode"], model_defaults=True)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--int8", action="store_true", help="quantize to int8 for faster CPU inference")
    parser.add_argument(
        "--bf16", action="store_true", help="multiply in bfloat16: GPUs, and CPUs with AMX or AVX512-BF16"
    )


def _decode_config(args: argparse.Namespace, translator_decode: DecodeConfig) -> DecodeConfig:
    config = Config(decode=dataclasses.replace(translator_decode))  # the flags do not change the translator's
    return _apply(config, _overrides(args)).decode


# --- commands ---------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from mt.train import Trainer, check_run_dir

    out = Path(args.out)
    if World.from_env().is_main:  # before reading the run's config, so the error says what is wrong
        check_run_dir(out, args.resume)
    stored = Config.load(out / "last" / CONFIG) if args.resume else None
    # a resumed run starts from its stored config; given a config file (the same command line as the
    # run's first, plus --resume), from that, and what it fixes must then agree with the stored one
    config = Config.load(args.config) if args.config else copy.deepcopy(stored) if stored else Config()
    for flag, dotted in (("data", "data.path"), ("src", "data.src"), ("tgt", "data.tgt")):
        if getattr(args, flag) is not None:
            set_field(config, dotted, getattr(args, flag))
    _apply(config, _overrides(args))
    if stored is not None:
        changed = [key for key in _fixed_on_resume() if get_field(config, key) != get_field(stored, key)]
        if changed:
            was = ", ".join(f"{key} {get_field(stored, key)!r} -> {get_field(config, key)!r}" for key in changed)
            raise ConfigError(
                f"cannot change when resuming ({was}): the checkpoint's weights, vocabulary, batches and "
                "optimizer state were made with the stored values; start a new run instead"
            )
    trainer = Trainer(config, out, resume=args.resume, max_steps=args.max_steps)
    progress = trainer.fit()
    if trainer.world.is_main:
        best = f"best greedy validation BLEU {progress.best_bleu:.2f} at step {progress.best_step}"
        print(f"{best}; model: {out / 'best'}")
    return 0


def _fixed_on_resume() -> list[str]:
    """What a resumed run must keep: the model and vocabulary its weights were built with, the corpus
    and batches its saved position points into (the corpus may move: data.path is free), and the
    learning rate and weight decay, which its optimizer's saved state would silently override."""
    fixed = [f"{section}.{key}" for section in ("model", "vocab", "data") for key in section_fields(section)]
    return [key for key in fixed if key != "data.path"] + [
        "train.seed",
        "train.batch_tokens",
        "train.lr",
        "train.weight_decay",
    ]


def cmd_translate(args: argparse.Namespace) -> int:
    from mt.translator import Translator, resolve_device

    world = World.from_env()  # under torchrun each rank translates every size-th line, and rank 0 writes all
    if world.size > 1 and not args.input:
        raise ValueError("under torchrun, give the text to translate as --input: every rank reads it")
    device = world.join(resolve_device(args.device, int8=args.int8))
    output = _output_file(Path(args.output)) if args.output and world.is_main else None  # before the work
    translator = Translator.from_dir(args.model, device=str(device), int8=args.int8, bf16=args.bf16)
    decode = _decode_config(args, translator.decode)
    source = Path(args.input).read_bytes() if args.input else sys.stdin.buffer.read()
    lines = read_text_lines(source, args.input or "stdin")
    indices = world.shard(list(range(len(lines))))
    outputs = translator.translate([lines[i] for i in indices], decode)
    blocks = world.gather_shards([_output(i, o, decode.n_best) for i, o in zip(indices, outputs, strict=True)])
    if not world.is_main:
        return 0
    text = "".join(blocks)
    if output:
        _write(output, text)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))  # UTF-8 as --output files are, whatever the locale
        sys.stdout.buffer.flush()
    return 0


def _output(index: int, translation: Translation, n_best: int) -> str:
    """The line of translation `index`; with n-best, Moses-style lines: index ||| hypothesis ||| score."""
    if n_best > 1:
        return "".join(f"{index} ||| {c.text} ||| {c.score:.4f}\n" for c in translation.candidates)
    return translation.text + "\n"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mt.evaluate import evaluate, read_test_set
    from mt.translator import Translator

    translator = Translator.from_dir(args.model, device=args.device, int8=args.int8, bf16=args.bf16)
    decode = _decode_config(args, translator.decode)
    src_lang = args.src_lang or translator.source_lang
    tgt_lang = args.tgt_lang or translator.target_lang
    sources, references, name = read_test_set(
        data=args.data, split=args.split, src=args.src, ref=args.ref, src_lang=src_lang, tgt_lang=tgt_lang
    )
    # the precision in the default name: an int8 or bf16 run does not overwrite the fp32 hypotheses
    precision = ".int8" if args.int8 else ".bf16" if args.bf16 else ""
    hyp_path = Path(args.hyp) if args.hyp else Path(args.model) / f"{name}.{tgt_lang}{precision}.hyp"
    hyp_file = _output_file(hyp_path)  # before the work
    result = evaluate(translator, sources, references, decode)
    _write(hyp_file, "".join(h + "\n" for h in result.hypotheses))
    print(result.report(name=name, decode=decode, hypotheses_path=hyp_path))
    return 0


def _output_file(path: Path) -> Path:
    """Where to write output `path`, checked before any work is done: a stream (`/dev/stdout`, `>(cmd)`, a
    pipe or a device) as it is, written to directly; else the file a link points to, which must be in a
    folder."""
    if _is_stream(path):
        if path.is_dir():
            raise ValueError(f"cannot write {path}: it is a folder")
        return path
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise ValueError(f"cannot write {path}: folder {target.parent} is not writable")
    return target


def _is_stream(path: Path) -> bool:
    """A pipe or a device, or one of this process's open files by name (`/dev/stdout`, `/dev/fd/3`): the
    shell opened it, so it is appended to (`>` had emptied it, `>>` had not), never replaced."""
    own_file = re.fullmatch(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|\d+)/fd/\d+", str(path))
    return bool(own_file) or (path.exists() and not path.is_file())


def _write(path: Path, text: str) -> None:
    """Replace file `path` by `text` at once: a kill while writing leaves the previous file, not half of
    one. A stream (`_is_stream`) is written to directly."""
    if _is_stream(path):
        with path.open("a", encoding="utf-8") as stream:
            stream.write(text)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_export(args: argparse.Namespace) -> int:
    from mt.checkpoint import export_model_dir

    sources = [Path(path) for path in args.models]
    decode = _decode_config(args, Config.load(Path(args.models[0]) / CONFIG).decode)
    exported = export_model_dir(sources, Path(args.out), half=args.fp16, decode=decode)
    out = Path(args.out)
    size = sum((out / name).stat().st_size for name in MODEL_FILES) / 1e6
    averaged = f"average of {len(sources)} checkpoints" if len(sources) > 1 else "one checkpoint"
    kept = sorted(entry.name for entry in out.iterdir() if entry.name not in MODEL_FILES)
    print(
        f"wrote {args.out}: {exported.model.num_parameters():,} parameters, {averaged}, "
        f"{'fp16' if args.fp16 else 'fp32'}, {size:.1f} MB" + (f"; kept {', '.join(kept)}" if kept else "")
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.registry import ModelsError, load_models
    from app.settings import load_settings
    from app.torch_thread import TORCH_THREAD

    flags = {
        "host": args.host,
        "port": args.port,
        "models_dir": args.models,
        "device": args.device,
        "int8": args.int8 or None,
        "bf16": args.bf16 or None,
        "api_keys_file": args.api_keys_file,
        "rate_limit_per_minute": args.rate_limit_per_minute,
        "cors_origins": args.cors_origins,
    }
    settings = load_settings(**{key: value for key, value in flags.items() if value is not None})
    logging.getLogger("app").setLevel(logging.DEBUG if settings.log_level == "trace" else settings.log_level.upper())
    try:  # before the server starts, so that a bad models folder is one clear line, not a traceback
        models = TORCH_THREAD.submit(
            load_models, settings.models_dir, settings.device, int8=settings.int8, bf16=settings.bf16
        ).result()
    except ModelsError as error:
        print(f"mt serve: error: {error}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings, models),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,  # on SIGTERM, requests in flight finish
    )
    return 0


# --- parser -----------------------------------------------------------------------------------------


def _at_least_0(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mt", description="Recurrent neural machine translation: train, translate, evaluate, export, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (or resume a killed run with --resume)")
    train.add_argument("--config", help="YAML config file; flags override it")
    train.add_argument("--data", help="hub dataset id, folder of {split}.jsonl, or folder of {split}.{lang}")
    train.add_argument("--src", help="source language code")
    train.add_argument("--tgt", help="target language code")
    train.add_argument("--out", required=True, help="run folder: checkpoints/, best, last, log.jsonl")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument(
        "--max-steps", type=_at_least_0, default=0, help="stop after this many steps in total (0 = no limit)"
    )
    _add_config_flags(train, [s for s in section_names() if s != "decode"])
    train.set_defaults(func=cmd_train)

    translate = commands.add_parser("translate", help="translate lines from stdin or --input")
    translate.add_argument("--model", required=True, help="model directory")
    translate.add_argument("--input", help="file to translate, one sentence per line (default: stdin)")
    translate.add_argument("--output", help="file to write (default: stdout)")
    _add_decode_flags(translate)
    translate.set_defaults(func=cmd_translate)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU and chrF of a model on a split or on files")
    evaluate.add_argument("--model", required=True, help="model directory")
    evaluate.add_argument("--data", help="corpus (as for train) to take --split from")
    evaluate.add_argument("--split", default="test", help="split of --data (default: test)")
    evaluate.add_argument("--src", help="source file, one sentence per line (instead of --data)")
    evaluate.add_argument("--ref", help="reference file, line-aligned with --src")
    evaluate.add_argument("--src-lang", help="source language key in --data (default: the model's)")
    evaluate.add_argument("--tgt-lang", help="target language key in --data (default: the model's)")
    evaluate.add_argument("--hyp", help="where to write the hypotheses (default: in the model directory)")
    _add_decode_flags(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)
    serve = commands.add_parser("serve", help="serve the models over HTTP (LibreTranslate-compatible API, web page)")
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1; env MT_HOST)")
    serve.add_argument("--port", type=int, help="port (default: 8000; env MT_PORT)")
    serve.add_argument("--models", help="folder of model directories (default: models; env MT_MODELS_DIR)")
    serve.add_argument("--device", help="cpu, cuda or auto (default: auto; env MT_DEVICE)")
    serve.add_argument("--int8", action="store_true", help="quantize the models to int8 (CPU only; env MT_INT8)")
    serve.add_argument(
        "--bf16", action="store_true", help="multiply in bfloat16: GPUs, CPUs with AMX or AVX512-BF16 (env MT_BF16)"
    )
    serve.add_argument(  # no flag for the keys themselves: flags show in `ps`
        "--api-keys-file",
        help="file of API keys, one per line, that /translate then requires (env MT_API_KEYS_FILE; "
        "or the keys, comma-separated, in env MT_API_KEYS)",
    )
    serve.add_argument(
        "--rate-limit-per-minute",
        type=int,
        help="/translate requests per key, or per client address without one (default: 0 = off; "
        "env MT_RATE_LIMIT_PER_MINUTE)",
    )
    serve.add_argument(
        "--cors-origins",
        help="comma-separated origins allowed to call the API from a browser, or * (env MT_CORS_ORIGINS)",
    )
    serve.set_defaults(func=cmd_serve)

    export = commands.add_parser("export", help="write a model directory to ship: averaged, fp16, decoding defaults")
    export.add_argument("models", nargs="+", help="model directories (checkpoints); several are averaged")
    export.add_argument("--out", required=True, help="model directory to write")
    export.add_argument("--fp16", action="store_true", help="store the weights in half precision")
    _add_config_flags(export, ["decode"], model_defaults=True)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(  # under torchrun, rank 0 speaks for all
        level=level if World.from_env().is_main else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    completed = False
    try:
        code = int(args.func(args))
        completed = True
        return code
    except (ConfigError, CorpusError, ModelDirError, ValueError, OSError) as error:
        print(f"mt {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mt {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        leave(completed=completed)
