"""The ``hjepa`` command: train, evaluate, export, embed, tune, plugins, config.

A user's mistake (bad config, unknown plugin, damaged data, foreign checkpoint) prints one clear
message without a traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError
from .process import apply_cpu_defaults
from .evaluation.selection import EVAL_TYPES

__all__ = ["main", "build_parser"]

DEFAULT_CONFIG = "configs/quickstart.yaml"
CONFIG_HELP = ("YAML run configuration, or the name of a bundled one (quickstart, cpu_cifar10 ...); "
               f"default: {DEFAULT_CONFIG} when present, else the bundled quickstart")


#: The default of ``--representation`` of export and embed, as their help states it.
REPRESENTATION_DEFAULT = ("default: the run's evaluated representation (evaluation.representation in the checkpoint, "
                          "what its evaluation graded)")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a configuration key by dotted path with a YAML value, e.g. --set training.epochs=5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hjepa`` (also used to generate the CLI reference)."""
    parser = argparse.ArgumentParser(prog="hjepa", description="Hierarchical JEPA pretraining and evaluation.")
    parser.add_argument("--version", action="version", version=f"hjepa-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="pretrain a model", description="Pretrain an H-JEPA model from a YAML configuration.")
    train.add_argument("--config", default=None, help=CONFIG_HELP)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the configured device")
    train.add_argument("--output-dir", help="root folder of the run's logs and checkpoints (default: results)")
    train.add_argument("--name", help="run name (folder under logs/ and checkpoints/)")
    train.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint, or 'auto' for the newest of this run")
    train.add_argument("--extend-epochs", type=int, metavar="N",
                       help="with --resume: train the finished run N epochs more, with new schedules that start where its "
                            "ended (recorded in training.extensions; the same command again continues an extension in progress)")
    train.add_argument("--extend-mode", choices=("tail", "restart"),
                       help="how --extend-epochs schedules the learning rate: tail (default), a new cosine from the current "
                            "learning rate; restart, a warmup back to training.lr (training.warmup_epochs, at most half the "
                            "extension), then a cosine")
    _add_set(train)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint", description="Evaluate a checkpoint: k-NN, linear probe, feature quality, hierarchy.")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint written by hjepa train")
    ev.add_argument("--dataset", help="dataset component to evaluate on (default: the one the run trained on)")
    ev.add_argument("--data-path", help="dataset folder (sets data.dataset.params.root)")
    ev.add_argument("--eval-type", nargs="+", default=["all"], metavar="TYPE",
                    help=f"what to run: {', '.join(EVAL_TYPES)}, or any registered evaluator name")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to extract features")
    ev.add_argument("--output-dir", help="where results.json, report.md and figures go (default: <output_dir>/eval/<run>)")
    _add_set(ev)

    export = sub.add_parser(
        "export", help="export the encoder for timm or ONNX",
        description="Export a checkpoint's target encoder for use without hjepa-kit: model.safetensors for plain timm "
        "and/or model.onnx, with config.json stating the architecture, preprocessing and pooling.",
    )
    export.add_argument("--checkpoint", required=True, help="a checkpoint written by hjepa train")
    export.add_argument("--out", required=True, metavar="DIR", help="the export folder to create (it must not exist, unless --force)")
    export.add_argument("--format", nargs="+", default=["timm"], metavar="FORMAT",
                        help="timm (model.safetensors, loadable by timm.create_model) and/or onnx (model.onnx, dynamic batch; "
                             "needs pip install 'hjepa-kit[export]')")
    export.add_argument("--representation", default=None,
                        help=f"what the exported model returns: encoder (mean-pooled tokens, the only one timm can hold), or for "
                             f"onnx a level: level0, level1 ...; {REPRESENTATION_DEFAULT}")
    export.add_argument("--force", action="store_true", help="replace DIR when it holds an earlier export")

    embed = sub.add_parser(
        "embed", help="write the features of a folder of images or a dataset",
        description="Features of every image of a folder or a dataset, from a checkpoint, as .npy or .npz.",
    )
    embed.add_argument("--checkpoint", required=True, help="a checkpoint written by hjepa train")
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="FOLDER", help="a folder of images (searched recursively); labels come from its top-level subfolders")
    source.add_argument("--dataset", metavar="NAME", help="a dataset component instead (cifar10, image_folder ...); the run's own keeps its parameters")
    embed.add_argument("--data-path", help="dataset folder (sets data.dataset.params.root)")
    embed.add_argument("--split", action="append", metavar="SPLIT", help="a split of the dataset to embed (repeatable; default: all)")
    embed.add_argument("--out", required=True, metavar="FILE",
                       help="FILE.npy (features only) or FILE.npz (features, labels, classes, paths or splits)")
    embed.add_argument("--representation", default=None, help=f"encoder, or a hierarchy level: level0, level1 ...; {REPRESENTATION_DEFAULT}")
    embed.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the encoder")
    embed.add_argument("--batch-size", type=int, help="images per batch (default: the run's data.eval_batch_size)")
    embed.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32", help="fp32 (exact) or bf16 autocast")
    embed.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed on stderr and in the .npz) instead of failing")
    embed.add_argument("--force", action="store_true", help="replace FILE when it exists")
    _add_set(embed)

    tune = sub.add_parser(
        "tune", help="search hyperparameters with Optuna (resumable, pruned, parallel)",
        description="Search a run's hyperparameters over a YAML search space with Optuna: TPE, pruning at epoch ends, "
        "a resumable study (the same command again tops it up), a trials table, best.yaml and a report. "
        "Needs pip install 'hjepa-kit[tune]'.",
    )
    tune.add_argument("--config", default=None, help=CONFIG_HELP)
    tune.add_argument("--space", required=True, metavar="SPACE.yaml", help="the search space: configuration key -> distribution (see the Tuning page)")
    tune.add_argument("--trials", required=True, type=int, metavar="N", help="the study's total of finished trials; a rerun tops the study up to N")
    tune.add_argument("--budget-min", type=float, metavar="M", help="start no new trial after M minutes (running trials finish)")
    tune.add_argument("--objective", default="auto", metavar="FIGURE",
                      help="auto (online k-NN with labels, else RankMe, else the loss), knn, rankme, loss, or any figure "
                           "reported at epoch end (online/knn/top1@20, health/rankme/level0, loss/level0)")
    tune.add_argument("--direction", choices=("max", "min"), help="default: min for figures named *loss*, else max")
    tune.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes on the one storage, each with cores/J threads")
    tune.add_argument("--storage", metavar="URL", help="an Optuna storage URL (postgresql://, mysql://, sqlite:///); "
                                                      "default: sqlite study.db in the study's folder")
    tune.add_argument("--study", metavar="NAME", help="the study's name (default: the run's name)")
    tune.add_argument("--output-dir", metavar="DIR", help="the study's folder (default: <output_dir>/tune/<study>)")
    tune.add_argument("--keep-checkpoints", action="store_true", help="keep every trial's checkpoints (default: the best trial's only)")
    _add_set(tune)

    plugins = sub.add_parser("plugins", help="list installed plugins and components")
    plugins.add_argument("--params", metavar="NAME", help="print the parameters of component NAME")
    plugins.add_argument("--kind", help="restrict to one kind (encoder, masker, predictor, loss, evaluator, dataset, callback)")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    config = sub.add_parser("config", help="show or validate a configuration (the one hjepa train would run)")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    for action, text in (("show", "print the resolved configuration"),
                         ("validate", "check a configuration and build its components without data (exit 0 or 2)")):
        p = config_sub.add_parser(action, help=text)
        p.add_argument("--config", default=None, help=CONFIG_HELP)
        _add_set(p)
    return parser


def _config_source(path: str | None) -> str | None:
    """``None`` -> ./configs/quickstart.yaml when present (else ``None``: the bundled quickstart).

    Every command passes the result on to :func:`hjepa_kit.bundled.resolve_config_source`, as
    :func:`hjepa_kit.train` does, so a bundled name and the default resolve alike everywhere.
    """
    if path is None and Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    return path


def _cmd_train(args: argparse.Namespace) -> int:
    from .api import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if args.name:
        overrides.append(f"name={json.dumps(args.name)}")
    if args.resume not in (None, "auto"):
        from .checkpoint_file import check_checkpoint_file

        check_checkpoint_file(args.resume)  # a missing file or a folder: said before the run is built
    result = train(_config_source(args.config), overrides=overrides, resume=args.resume,
                   extend_epochs=args.extend_epochs, extend_mode=args.extend_mode)
    if os.environ.get("RANK", "0") != "0":
        return 0 if result.status in ("completed", "stopped") else 130  # rank 0 reports for the run
    print(f"run {result.status}: {result.steps} steps, {result.epochs} epochs")
    print(f"logs: {result.log_dir}")
    for name, path in sorted(result.checkpoints.items()):
        print(f"checkpoint {name}: {path}")
    return 0 if result.status in ("completed", "stopped") else 130


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate

    import logging

    types = []
    for item in args.eval_type:
        types += [t for t in item.split(",") if t]
    # Progress lines on stderr as they happen (features, each fine-tuning epoch, the end).
    logger, progress = logging.getLogger("hjepa_kit"), logging.StreamHandler(sys.stderr)
    progress.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        results = evaluate(
            args.checkpoint, dataset=args.dataset, data_path=args.data_path, eval_types=types,
            device=args.device, output_dir=args.output_dir, overrides=args.overrides,
        )
    finally:
        logger.removeHandler(progress)
        logger.setLevel(level)
    for key, value in results["metrics"].items():
        print(f"{key:45s} {value:.4g}" if isinstance(value, float) else f"{key:45s} {value}")
    print(f"report: {results['paths'].get('report.md', '')}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .api import export

    result = export(args.checkpoint, args.out, formats=args.format, representation=args.representation, force=args.force)
    print(_representation_line(result.config["representation"], result.config["evaluation_representation"]))
    for name, path in result.files.items():
        check = result.config.get(name, {}).get("verified") if name != "config" else None
        note = f"  (max abs difference {check['max_abs_difference']:.2g} from hjepa-kit's features)" if isinstance(check, dict) else (
            f"  ({check})" if check else "")
        print(f"{name:7s} {path}{note}")
    if "timm" in result.files:
        print("load it with plain timm:")
        for line in result.config["usage"]["timm"].splitlines():
            print(f"  {line}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .api import embed

    result = embed(
        args.checkpoint, args.out, images=args.images, dataset=args.dataset, data_path=args.data_path, splits=args.split,
        representation=args.representation, device=args.device, batch_size=args.batch_size, precision=args.precision,
        skip_bad=args.skip_bad, force=args.force, overrides=args.overrides, progress=True,
    )
    for path in result.skipped:
        print(f"hjepa embed: skipped unreadable image {path}", file=sys.stderr)
    print(_representation_line(result.representation, result.evaluated_representation))
    print(f"{result.count} images -> {result.path}: {result.representation} features of width {result.feature_dim} "
          f"({result.seconds:.1f}s on {result.device}{f', {len(result.skipped)} skipped' if result.skipped else ''})")
    return 0


def _representation_line(chosen: str, evaluated: str) -> str:
    """Which representation export / embed computed, and whether it is the one the run graded."""
    if chosen == evaluated:
        return f"representation {chosen}: the run's evaluated representation (evaluation.representation)"
    return f"representation {chosen}: chosen with --representation; the run evaluated {evaluated}"


def _cmd_tune(args: argparse.Namespace) -> int:
    from .api import tune

    result = tune(
        _config_source(args.config), args.space, trials=args.trials, budget_min=args.budget_min, objective=args.objective,
        direction=args.direction, jobs=args.jobs, storage=args.storage, study=args.study, output_dir=args.output_dir,
        overrides=args.overrides, keep_checkpoints=args.keep_checkpoints,
    )
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items() if n)
    print(f"study {result.study}: {counts}; objective {result.objective} ({result.direction})")
    if result.best_trial is not None:
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
        print(f"best trial {result.best_trial}: {result.best_value:.4g} ({params})")
    for name, path in result.files.items():
        print(f"{name:16s} {path}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .contracts import KINDS
    from .params import describe
    from .registry import Registry, component_table

    registry = Registry()
    if args.kind and args.kind not in KINDS:
        raise UserError(f"--kind {args.kind!r}: unknown kind; kinds are {', '.join(KINDS)}")
    if args.params:
        found = [c for c in registry.find(args.params) if not args.kind or c.kind == args.kind]
        if not found:
            names = [n for kind in KINDS for n in registry.names(kind)]
            from .params import suggest

            raise UserError(f"--params {args.params!r}: no component has that name{suggest(args.params, names)}; see `hjepa plugins`")
        if len(found) > 1:
            raise UserError(f"--params {args.params!r}: several kinds use that name ({', '.join(c.kind for c in found)}); add --kind")
        component = found[0]
        rows = describe(component.params)
        if args.json:
            print(json.dumps({"kind": component.kind, "name": component.name, "plugin": component.plugin,
                              "distribution": component.distribution, "version": component.version,
                              "summary": component.summary, "params": [_row_dict(r) for r in rows]}, indent=2))
            return 0
        print(f"{component.kind} {component.name} — {component.summary}")
        print(f"from plugin {component.origin}")
        if not rows:
            print("(no parameters)")
        for r in rows:
            default = "required" if r.required else json.dumps(r.default)
            allowed = f"  [{r.allowed}]" if r.allowed else ""
            print(f"  {r.name}: {r.type} = {default}{allowed}\n      {r.help}")
        return 0
    rows = [r for r in component_table(registry) if not args.kind or r["kind"] == args.kind]
    if args.json:
        print(json.dumps({"components": rows, "plugins": registry.plugin_info(), "problems": registry.problems}, indent=2))
        return 0
    # Columns as wide as their longest entry; the registry has warned of its problems already.
    origins = [f"{r['plugin']} ({r['distribution']} {r['version']})".replace(" )", ")") for r in rows]
    name_width = max((len(r["name"]) for r in rows), default=0)
    origin_width = max((len(o) for o in origins), default=0)
    for kind in KINDS:
        kind_rows = [(r, o) for r, o in zip(rows, origins) if r["kind"] == kind]
        if not kind_rows:
            continue
        print(f"{'losses' if kind == 'loss' else kind + 's'}:")
        for r, origin in kind_rows:
            print(f"  {r['name']:<{name_width}}  {origin:<{origin_width}}  {r['summary']}".rstrip())
    return 0


def _row_dict(row: Any) -> dict[str, Any]:
    return {"name": row.name, "type": row.type, "default": row.default, "required": row.required, "help": row.help, "allowed": row.allowed}


def _cmd_config(args: argparse.Namespace) -> int:
    from .bundled import resolve_config_source
    from .config import dump_config, load_config
    from .registry import Registry

    if args.config_command is None:
        raise UserError("choose an action: hjepa config show or hjepa config validate")
    source, name = resolve_config_source(_config_source(args.config))  # what `hjepa train` would run
    config = load_config(source, args.overrides)
    resolved = Registry().resolve(config, name)
    if args.config_command == "show":
        print(dump_config(config, {path: params for path, (_, params) in resolved.items()}), end="")
        return 0
    from .build import check_build

    notes = check_build(resolved, config)  # every build-time check that needs no data, as `hjepa train` runs it
    built = "components checked" if not notes else "components; some not built, see below"
    print(f"{name}: valid ({len(resolved)} {built})")
    for note in notes:
        print(f"note: {note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hjepa``; returns the exit status."""
    apply_cpu_defaults()  # before torch loads (the commands import it lazily)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "export": _cmd_export, "embed": _cmd_embed,
                "tune": _cmd_tune, "plugins": _cmd_plugins, "config": _cmd_config}
    warnings.showwarning = _show_warning
    try:
        return commands[args.command](args)
    except UserError as exc:
        print(f"hjepa {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hjepa {args.command}: interrupted", file=sys.stderr)
        return 130


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    from .registry import PluginWarning

    if issubclass(category, PluginWarning):
        print(f"hjepa: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end="")


if __name__ == "__main__":
    sys.exit(main())
