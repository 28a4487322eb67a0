"""The ``rvseg`` command line: a thin layer over the library API.

Every user-facing problem arrives as an :class:`~rvseg.errors.RvsegError` and leaves as one line
``rvseg: <message>`` on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from rvseg import __version__
from rvseg.errors import ConfigError, RvsegError
from rvseg.train.config import add_train_arguments

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def print_json(data) -> None:
    """Standard JSON on stdout (NaN as null: ``jq`` and most parsers refuse NaN)."""
    from rvseg.io import json_safe

    print(json.dumps(json_safe(data), indent=2, default=str))


# ---------------------------------------------------------------- data


def cmd_phantom(args) -> int:
    from rvseg.data.phantom import write_phantom

    summary = write_phantom(Path(args.out), patients=args.patients, seed=args.seed,
                            slices=args.slices, frames=args.frames)
    print(f"wrote a synthetic phantom (not real data) of {args.patients} patient(s) to {args.out}")
    print(f"  {summary.annotated_samples} annotated images (ED and ES of each slice), {summary.files_written} files")
    return 0


def prepare_options(args):
    from rvseg.data.prepare import PrepareOptions

    return PrepareOptions(
        **reader_options(args),
        size=tuple(args.size) if args.size else None,
        channels=args.channels,
        mask_style=args.mask_style,
        normalize=args.normalize,
        clahe=args.clahe,
    )


def reader_options(args) -> dict:
    """The options of :func:`add_reader_arguments` as :class:`PrepareOptions` fields."""
    labels = tuple(label.strip() for label in args.labels.split(",")) if args.labels else None
    return {"format": args.format, "skip_bad": args.skip_bad, "labels": labels}


def cmd_prepare(args) -> int:
    from rvseg.data.prepare import prepare

    summary = prepare(args.src, args.out, prepare_options(args), force=args.force)
    if args.json:
        print_json(summary)
    else:
        print_prepare_summary(summary, f"prepared {args.out}")
    return 1 if summary["skipped"] else 0


def print_prepare_summary(summary: dict, heading: str) -> None:
    print(f"{heading}: {summary['n_samples']} samples of {summary['n_patients']} patient(s) ({summary['format']})")
    for name, stats in summary["labels"].items():
        print(f"  {name}: {stats['count']} samples, mean foreground {stats['mean_foreground_fraction']:.3%}")
    print("  phases: " + ", ".join(f"{k} {v}" for k, v in summary["phases"].items()))
    unmatched = summary["unmatched"]
    print(f"  images without contours: {len(unmatched['images'])}; contours without images: "
          f"{len(unmatched['contours'])}; unfillable maps: {len(summary['unfillable'])}")
    for path in unmatched["contours"] + summary["unfillable"]:
        print(f"    {path}")
    for skipped in summary["skipped"]:
        print(f"  skipped {skipped['path']}: {skipped['reason']}")
    for note in summary["notes"]:
        print(f"  note: {note}")


def cmd_inspect(args) -> int:
    from rvseg.data.dataset import is_prepared, load_dataset
    from rvseg.data.inspect import dataset_summary, draw_montage, load_study
    from rvseg.data.prepare import PrepareOptions
    from rvseg.io import check_output_file

    if args.montage:
        check_output_file(args.montage)
    study = not is_prepared(args.dataset)
    if study:
        dataset = load_study(args.dataset, PrepareOptions(**reader_options(args)))
    elif args.format != "auto" or args.labels or args.skip_bad:
        raise ConfigError("--format, --labels and --skip-bad apply to a study; this is a prepared data set, "
                          "read as it was prepared")
    else:
        dataset = load_dataset(args.dataset)
    summary = dataset_summary(dataset)
    if args.montage:
        draw_montage(dataset, args.montage, n=args.n)
    if args.json:
        print_json(summary)
    else:
        print_prepare_summary(summary, str(args.dataset))
        print(f"  arrays: {summary['shape']}, content hash {summary['content_hash']}")
        if args.montage:
            print(f"  montage: {args.montage}")
    return 1 if study and summary["skipped"] else 0  # a prepared set's skips were reported when it was made


# ---------------------------------------------------------------- training


def cmd_train(args) -> int:
    from rvseg.train.config import load_config, overrides_from_args
    from rvseg.train.folds import fold_runs, train_folds
    from rvseg.train.loop import train

    out, overrides = Path(args.out), overrides_from_args(args)
    saved = out / "config.yaml"  # a resumed run starts from its saved options
    fold_configs = [run / "config.yaml" for run in fold_runs(out) if (run / "config.yaml").is_file()]
    if args.resume and not args.config and not saved.is_file() and fold_configs and args.fold is None:
        # A resumed cross-validation: every fold, with the options the first fold folder saved.
        config = dataclasses.replace(load_config(fold_configs[0], overrides), fold=None)
    else:
        config = load_config(args.config or (saved if args.resume and saved.is_file() else None), overrides)
    if config.folds and config.fold is None:
        train_folds(args.dataset, args.out, config, resume=args.resume, verbose=not args.quiet)
    else:
        train(args.dataset, args.out, config, resume=args.resume, verbose=not args.quiet)
    return 0


# ---------------------------------------------------------------- evaluation and prediction


#: The volume quantities printed, as (summary key, name, unit).
VOLUME_QUANTITIES = (("ed_volume_ml", "EDV", "mL"), ("es_volume_ml", "ESV", "mL"), ("stroke_volume_ml", "SV", "mL"),
                     ("ef_percent", "EF", "%"))


def cmd_evaluate(args) -> int:
    from rvseg.evaluate import evaluate

    summary = evaluate(args.checkpoints, args.dataset, split=args.split, out=args.out, ensemble=args.ensemble,
                       tta=args.tta, batch_size=args.batch_size, device=args.device, force=args.force,
                       save_scores=args.save_scores, cv=args.cv, **postprocess_option(args))
    if args.json:
        print_json(summary)
    else:
        print_evaluation_summary(summary, args.split, args.out)
    return 0


def print_evaluation_summary(summary: dict, split: str, out) -> None:
    split = f"{len(summary['folds'])}-fold cross-validation" if "folds" in summary else f"{split} split"
    print(f"evaluated {summary['n_samples']} samples of {len(summary['patients'])} patient(s) "
          f"({split}, post-processing {summary['settings']['postprocess']}) -> {out}")
    for label, stats in summary["labels"].items():
        for group, cells in stats["table"].items():
            hd_rows = f" over {cells['hd_n']} of them" if cells["hd_n"] < cells["n"] else ""
            units = "mm" if summary["units"] == "mixed" else summary["units"]  # pixel rows are left out then
            print(f"  {label} {group:>3} (n={cells['n']}): Dice {number(cells['dice_mean'])} "
                  f"({number(cells['dice_sd'])}), HD {number(cells['hd_mean'], 2)} ({number(cells['hd_sd'], 2)}) "
                  f"{units}{hd_rows}")
        levels = [f"{level} {number(group['metrics']['dice']['mean'])} (n={group['n']})"
                  for level, group in stats["by_slice_level"].items()]
        if levels:
            print(f"  {label} Dice by slice level: {', '.join(levels)}")
        overall = stats["overall"]
        print(f"  {label}: {overall['n_both_empty']} both empty, {overall['n_one_empty']} with one empty mask")
    if "unit_note" in summary:
        print(f"  note: {summary['unit_note']}")
    for k, fold in enumerate(summary.get("folds", [])):
        dice = ", ".join(f"{label} {number(stats['metrics']['dice']['mean'])}"
                         for label, stats in fold["labels"].items())
        print(f"  fold {k} ({', '.join(fold['patients'])}; {len(fold['checkpoints'])} run(s)): Dice {dice}")
    if "fold_mean" in summary:
        dice = ", ".join(f"{label} {number(means['dice'])}{interval_text(means.get('dice_ci95'))}"
                         for label, means in summary["fold_mean"].items())
        print(f"  mean of the {len(summary['folds'])} folds: Dice {dice}")
    if "cv_note" in summary:
        print(f"  note: {summary['cv_note']}")
    volumes = summary["volumes"]
    if volumes["patients"]:
        print(f"  {volumes['chamber']} volumes from {volumes['label']}, predicted - reference over patients:")
        for key, name, unit in VOLUME_QUANTITIES:
            if key in volumes["agreement"]:
                cells = volumes["agreement"][key]
                unit = "points" if unit == "%" else unit  # an EF difference is in percentage points
                print(f"    {name} bias {number(cells['bias'], 1)} {unit} (sd {number(cells['sd'], 1)}, MAE "
                      f"{number(cells['mae'], 1)}, r {number(cells['r'], 2)}, n {cells['n']})")
    for note in volumes["notes"]:
        print(f"  volumes: {note}")


def interval_text(interval: list[float] | None) -> str:
    return f" (95% interval over patients {number(interval[0])}-{number(interval[1])})" if interval else ""


def number(value, digits: int = 3) -> str:
    """A float with ``digits`` decimals, or ``-`` for an undefined (None) value."""
    return "-" if value is None else f"{value:.{digits}f}"


def cmd_predict(args) -> int:
    from rvseg.predict import predict

    summary = predict(args.checkpoints, args.src, args.out, ensemble=args.ensemble, tta=args.tta,
                      batch_size=args.batch_size, device=args.device, force=args.force, **postprocess_option(args))
    for skipped in summary["skipped"]:
        print(f"rvseg: skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    if args.json:
        print_json(summary)
    else:
        print_prediction_summary(summary, args.out)
    return 1 if summary["skipped"] else 0


def print_prediction_summary(summary: dict, out) -> None:
    print(f"segmented {summary['n_images']} image(s), skipped {summary['n_skipped']} -> {out}")
    if summary["n_ignored"]:
        print(f"  left {summary['n_ignored']} file(s) alone (ignored.csv says why)")
    for stack, volumes in summary["volumes"].items():
        # The stroke volume goes with the EF (same slices at ED and ES); "no EF" says why both are missing.
        parts = [f"{name} {number(volumes[key], 1)} {unit}" if volumes[key] is not None else f"no {name}"
                 for key, name, unit in VOLUME_QUANTITIES if key != "stroke_volume_ml" or volumes[key] is not None]
        print(f"  {stack}: {summary['chamber']} {', '.join(parts)}")
    for note in summary["notes"]:
        print(f"  note: {note}")


def cmd_demo(args) -> int:
    from rvseg.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def cmd_bench(args) -> int:
    from rvseg.bench import BenchOptions, format_table, run_bench
    from rvseg.io import check_output_file, write_json

    options = BenchOptions(
        device=args.device, size=tuple(args.size) if args.size else None, batch_size=args.batch_size,
        arch=args.arch, width=args.width, depth=args.depth, loss=args.loss, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
        cuda_graph=args.cuda_graph, cudnn_benchmark=args.cudnn_benchmark, steps=args.steps,
        repeats=args.repeats, warmup=args.warmup, parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
        dataset=Path(args.dataset) if args.dataset else None,
    )
    if args.out:
        check_output_file(args.out)  # before the measurements, which a bad path would lose
    result = run_bench(options)
    if args.out:
        write_json(args.out, result)
    if args.json:
        print_json(result)
    else:
        print(format_table(result))
    return 1 if result["errors"] else 0


# ---------------------------------------------------------------- sweeps and reports


def cmd_sweep(args) -> int:
    import yaml

    from rvseg.errors import ConfigError
    from rvseg.sweep import SweepOptions, format_summary, resolve_spec, run_sweep
    from rvseg.sweeps.spec import make_overrides

    overrides = make_overrides(epochs=args.epochs, size=args.size, width=args.width, depth=args.depth,
                               batch_size=args.batch_size, device=args.device, repeats=args.repeats,
                               assignments=args.set, only=args.only, test=args.test)
    spec = resolve_spec(args.spec, tuple(args.preset) if args.preset else None, overrides)
    if args.print_spec:
        print(yaml.safe_dump(spec.to_dict(), sort_keys=False), end="")
        return 0
    if not args.out:
        raise ConfigError("rvseg sweep needs --out SWEEP")
    summary = run_sweep(spec, args.out, SweepOptions(storage=args.storage, workers=args.workers,
                                                     study_name=args.study, grace_s=args.grace_period,
                                                     retry_failed=args.retry_failed, keep_last=args.keep_last))
    print(format_summary(summary))
    return 1 if summary["by_status"].get("failed") else 0


def cmd_report(args) -> int:
    from rvseg.report.html import write_report

    written = write_report(args.path, args.out, dataset=args.dataset)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


# ---------------------------------------------------------------- parser


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="auto",
                        help="auto (default: detected) | rvsc | sunnybrook | pngpairs | acdc")
    parser.add_argument("--labels", help="label names for the i- and o-contours (Sunnybrook), e.g. endo,epi")
    parser.add_argument("--skip-bad", action="store_true", help="record bad files in the summary and go on")


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    add_reader_arguments(parser)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize every slice (default: native)")
    parser.add_argument("--channels", type=int, default=1, help="1 (gray; default) or 3 (the study's RGB variant)")
    parser.add_argument("--mask-style", default="filled", help="filled (default) | outline | grey target encoding")
    parser.add_argument("--normalize", default="percentile", help="percentile (default) | zscore | none")
    parser.add_argument("--clahe", action="store_true", help="contrast-limited adaptive histogram equalisation")


def postprocess_option(args) -> dict:
    """``--postprocess`` as a keyword argument (none given: the library's default, ``stack``);
    evaluate's ``--no-postprocess`` is ``--postprocess none``."""
    if getattr(args, "no_postprocess", False):
        if args.postprocess not in (None, "none"):
            raise ConfigError(f"--no-postprocess contradicts --postprocess {args.postprocess}")
        return {"postprocess": "none"}
    return {} if args.postprocess is None else {"postprocess": args.postprocess}


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ensemble", default="mean", help="several checkpoints: mean (average probability; "
                                                           "default) | vote (majority)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--postprocess",
                        help="one region per label: stack (chosen through each stack of slices at one instant; "
                             "default) | largest (per image) | none (raw masks)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if available) | cpu | cuda | cuda:N")
    parser.add_argument("--force", action="store_true", help="replace an earlier output folder of rvseg")


def usage_error(prog: str, message: str) -> NoReturn:
    """Exit with one line naming what is wrong and pointing at ``PROG --help``: argparse prints the whole
    usage first, which for ``train`` is two dozen lines above the error."""
    print(f"{prog}: error: {message} (options: {prog} --help)", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


class OneLineErrors(argparse.ArgumentParser):
    """A parser whose usage errors are :func:`usage_error`'s one line."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="rvseg", description="Right-ventricle segmentation for cardiac MRI.")
    parser.add_argument("--version", action="version", version=f"rvseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("phantom", help="write a synthetic cine study in the RVSC layout")
    p.add_argument("--out", required=True, help="study folder to write (new, empty, or an earlier phantom)")
    p.add_argument("--patients", type=int, default=4, help="patients, 1-99 (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="patient n depends only on (seed, n) (default: 0)")
    p.add_argument("--slices", type=int, default=8, help="short-axis slices per patient (default: 8)")
    p.add_argument("--frames", type=int, default=20, help="frames per slice over one cycle, at least 2 (default: 20)")
    p.set_defaults(handler=cmd_phantom)

    p = commands.add_parser("prepare", help="read a study (any layout) into a prepared data set")
    p.add_argument("src", help="a study folder in any supported layout (see --format)")
    p.add_argument("--out", required=True, help="prepared data set folder to write")
    add_prepare_arguments(p)
    p.add_argument("--force", action="store_true", help="replace an earlier output folder of rvseg")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_prepare)

    p = commands.add_parser("inspect", help="check a study (any layout) or a prepared data set: counts, "
                                            "problems, a montage")
    p.add_argument("dataset", help="a prepared data set (rvseg prepare), or a study folder in any supported "
                                   "layout, read as prepare reads it without writing anything")
    add_reader_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--montage", help="PNG path for a grid of images with contours")
    p.add_argument("--n", type=int, default=16, help="samples in the montage")
    p.set_defaults(handler=cmd_inspect)

    p = commands.add_parser("train", help="train a U-Net on a prepared data set")
    p.add_argument("dataset", help="a prepared data set (rvseg prepare)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", help="YAML file of options (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_train_arguments(p)
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser("evaluate", help="Dice, HD (mm) and more of a checkpoint (or an ensemble) on a "
                                             "prepared data set")
    p.add_argument("checkpoints", nargs="+", metavar="RUN_OR_CHECKPOINT",
                   help="checkpoint files or run folders; several are evaluated as one ensemble (with --cv, as "
                        "the folds of a cross-validation)")
    p.add_argument("dataset", metavar="DATASET", help="a prepared data set (rvseg prepare)")
    p.add_argument("--split", default="val",
                   help="val (the checkpoint's; default) | test (patients it never saw) | all")
    p.add_argument("--out", required=True, metavar="EVAL", help="output folder")
    add_inference_arguments(p)
    p.add_argument("--no-postprocess", action="store_true", help="score the raw masks: --postprocess none")
    p.add_argument("--save-scores", action="store_true",
                   help="also write scores.npz: the score maps before post-processing, per sample")
    p.add_argument("--cv", action="store_true",
                   help="the runs are the folds of one cross-validation (runs validated on the same patients, such "
                        "as seeds, are one fold's ensemble): each fold is scored on its own validation patients and "
                        "the rows are pooled; the summary adds each fold and the mean of the folds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_evaluate)

    p = commands.add_parser("predict", help="segment DICOM / PNG / NIfTI images, write masks, contours and RV volumes")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files or run folders")
    p.add_argument("src", metavar="SRC", help="a DICOM / PNG / JPEG / NIfTI file, a folder of them, an RVSC or ACDC "
                                              "patient folder, or a prepared data set")
    p.add_argument("--out", required=True, metavar="PRED", help="output folder")
    add_inference_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_predict)

    p = commands.add_parser("demo", help="phantom -> prepare -> train -> evaluate -> predict, on the CPU")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")
    p.set_defaults(handler=cmd_demo)

    p = commands.add_parser("bench", help="measure training, evaluation and prediction speed on this machine")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="image size (default: 256 208 on CUDA, 128 112 on CPU; with --dataset, its size)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    p.add_argument("--arch", default="unet", help="unet | dilated-unet")
    p.add_argument("--width", type=int, help="channels of the first level (default: 64 on CUDA, 16 on CPU)")
    p.add_argument("--depth", type=int, default=4, help="number of poolings (default: 4)")
    p.add_argument("--loss", default="dice", help="training loss of the raw step and the loop")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last raw step and prediction (default: as the training loop, on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (raw step and loop)")
    p.add_argument("--compile-mode", default="default", help="default | reduce-overhead | max-autotune (raw step)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole raw training step as one CUDA graph and replay it")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick the fastest kernels (all parts)")
    p.add_argument("--steps", type=int, help="timed steps per repeat (default: 30 on CUDA, 5 on CPU)")
    p.add_argument("--repeats", type=int, help="timed repeats; figures are their median (default: 5 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--parts", default="raw,loop,loop-noaug,eval,predict", help="what to measure (comma-separated)")
    p.add_argument("--dataset", help="prepared data set for the loop, eval and predict (default: a synthetic phantom)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.set_defaults(handler=cmd_bench)

    p = commands.add_parser("sweep", help="a resumable, parallel hyperparameter sweep (Optuna)")
    p.add_argument("spec", nargs="?", help="sweep SPEC (YAML); or use --preset")
    p.add_argument("--preset", nargs=2, metavar=("NAME", "DATASET"),
                   help="lr-grid | losses | preprocessing | baseline, on DATASET (prepared, or a raw study "
                        "folder, which preprocessing and --size need)")
    p.add_argument("--out", help="sweep folder (rerun the same command to continue a sweep)")
    p.add_argument("--storage", help="journal:PATH, or a sqlite://, postgresql:// or mysql:// URL "
                                     "(default: sqlite:///SWEEP/study.db)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine (sharing the GPU; one GPU each, round robin, when several "
                        "are visible)")
    p.add_argument("--study", help="study name (default: spec name and fingerprint)")
    p.add_argument("--grace-period", type=float, default=300.0,
                   help="seconds without heartbeat after which another machine's trial is presumed dead")
    p.add_argument("--retry-failed", action="store_true", help="train the points of failed trials again")
    p.add_argument("--keep-last", action="store_true",
                   help="keep each finished run's last.pt (only resuming needs it; best.pt is always kept)")
    p.add_argument("--test", help="prepared set of held-out patients, scored with rvseg evaluate")
    p.add_argument("--epochs", type=int, help="scale down: epochs per run")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="scale down: prepare the data at H x W")
    p.add_argument("--width", type=int, help="scale down: U-Net width")
    p.add_argument("--depth", type=int, help="scale down: U-Net depth")
    p.add_argument("--batch-size", type=int, help="batch size of every run")
    p.add_argument("--device", help="device of every run (auto | cpu | cuda)")
    p.add_argument("--repeats", type=int, help="seeds per point")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a training option of every run (repeatable)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                   help="keep only these values of an axis (repeatable)")
    p.add_argument("--print-spec", action="store_true", help="print the resolved SPEC as YAML and stop")
    p.set_defaults(handler=cmd_sweep)

    p = commands.add_parser("report", help="a self-contained HTML report of a sweep or a run (+ Markdown tables)")
    p.add_argument("path", help="a sweep folder or a run folder")
    p.add_argument("--out", required=True, help="HTML file to write (NAME.html; its Markdown twin NAME.md beside it)")
    p.add_argument("--dataset", help="run reports: prepared set for best/worst examples (default: none)")
    p.set_defaults(handler=cmd_report)
    return parser


#: Commands whose positionals are "one or more checkpoints, then one path". With options between them
#: (``evaluate runA runB --tta data``) argparse splits the paths at the options and misassigns them.
CHECKPOINTS_THEN_PATH = {"evaluate": "dataset", "predict": "src"}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    last = CHECKPOINTS_THEN_PATH.get(args.command)
    # Only paths that exist are taken back: a stray word after the options stays an error.
    if extras and last and all(Path(extra).exists() for extra in extras):
        paths = [*args.checkpoints, getattr(args, last), *extras]  # in command-line order
        args.checkpoints = paths[:-1]
        setattr(args, last, paths[-1])
    elif extras:
        usage_error(f"rvseg {args.command}", f"unrecognized arguments: {' '.join(extras)}")
    return args


def console_main() -> None:
    """The process entry point (``rvseg``, ``python -m rvseg``)."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank skips the interpreter's shutdown. DDP keeps the gloo process group alive past
        # destroy_process_group(), and a gloo worker thread that frees a finished collective's tensors
        # needs the GIL: during finalisation that aborts the rank (SIGABRT after a finished run, about
        # 1 run in 15 with 2 CPU ranks). Output is flushed and every file already written atomically.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        return args.handler(args)
    except RvsegError as exc:
        print(f"rvseg: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # `rvseg ... | head` closed the pipe: the reader has what it wanted, and the outputs are written.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's exit flushes stdout once more
        return 0
    except OSError as exc:
        # A folder that cannot be created or written (permissions, read-only disk, full disk) is the
        # user's environment, not a bug: one line naming the path, as for any bad input.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rvseg: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        # A sweep continues where it stopped when the same command runs again.
        again = "; run the same command again to continue the sweep" if args.command == "sweep" else ""
        print(f"rvseg: interrupted{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
