"""The ``rvseg`` command line: a thin layer over the library API.

Every user-facing problem arrives as an :class:`~rvseg.errors.RvsegError` and leaves as one line
``rvseg: <message>`` on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rvseg import __version__
from rvseg.errors import RvsegError
from rvseg.train.config import add_train_arguments

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


# ---------------------------------------------------------------- data


def cmd_phantom(args) -> int:
    from rvseg.data.phantom import write_phantom

    summary = write_phantom(Path(args.out), patients=args.patients, seed=args.seed,
                            slices=args.slices, frames=args.frames)
    print(f"wrote a synthetic phantom (not real data) of {args.patients} patient(s) to {args.out}")
    print(f"  {summary.annotated_samples} annotated slices, {summary.files_written} files")
    return 0


def prepare_options(args):
    from rvseg.data.prepare import PrepareOptions

    return PrepareOptions(
        format=args.format,
        size=tuple(args.size) if args.size else None,
        channels=args.channels,
        mask_style=args.mask_style,
        normalize=args.normalize,
        clahe=args.clahe,
        skip_bad=args.skip_bad,
        labels=tuple(args.labels.split(",")) if args.labels else None,
    )


def cmd_prepare(args) -> int:
    from rvseg.data.prepare import prepare

    summary = prepare(args.src, args.out, prepare_options(args), force=args.force)
    if args.json:
        print_json(summary)
    else:
        print_prepare_summary(summary, args.out)
    return 1 if summary["skipped"] else 0


def print_prepare_summary(summary: dict, out) -> None:
    print(f"prepared {summary['n_samples']} samples of {summary['n_patients']} patients "
          f"({summary['format']}) -> {out}")
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
    from rvseg.data.dataset import load_dataset
    from rvseg.data.inspect import dataset_summary, draw_montage

    dataset = load_dataset(args.dataset)
    summary = dataset_summary(dataset)
    if args.montage:
        draw_montage(dataset, args.montage, n=args.n)
    if args.json:
        print_json(summary)
    else:
        print_prepare_summary(summary, args.dataset)
        print(f"  arrays: {summary['shape']}, content hash {summary['content_hash']}")
        if args.montage:
            print(f"  montage: {args.montage}")
    return 0


# ---------------------------------------------------------------- training


def cmd_train(args) -> int:
    from rvseg.train.config import load_config, overrides_from_args
    from rvseg.train.loop import train

    saved = Path(args.out) / "config.yaml"
    base = args.config or (saved if args.resume and saved.is_file() else None)
    config = load_config(base, overrides_from_args(args))
    train(args.dataset, args.out, config, resume=args.resume, verbose=not args.quiet)
    return 0


def cmd_demo(args) -> int:
    from rvseg.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


# ---------------------------------------------------------------- parser


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="auto", help="auto | rvsc | sunnybrook | pngpairs | acdc")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize every slice (default: native)")
    parser.add_argument("--channels", type=int, default=1, help="1 (gray) or 3 (the study's RGB variant)")
    parser.add_argument("--mask-style", default="filled", help="filled | outline | grey target encoding")
    parser.add_argument("--normalize", default="percentile", help="percentile | zscore | none")
    parser.add_argument("--clahe", action="store_true", help="contrast-limited adaptive histogram equalisation")
    parser.add_argument("--labels", help="label names for the i- and o-contours (Sunnybrook), e.g. endo,epi")
    parser.add_argument("--skip-bad", action="store_true", help="record bad files in the summary and go on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvseg", description="Right-ventricle segmentation for cardiac MRI.")
    parser.add_argument("--version", action="version", version=f"rvseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("phantom", help="write a synthetic cine study in the RVSC layout")
    p.add_argument("--out", required=True)
    p.add_argument("--patients", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--frames", type=int, default=20)
    p.set_defaults(handler=cmd_phantom)

    p = commands.add_parser("prepare", help="read a study (any layout) into a prepared data set")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    add_prepare_arguments(p)
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_prepare)

    p = commands.add_parser("inspect", help="summarise a prepared data set, draw a montage")
    p.add_argument("dataset")
    p.add_argument("--json", action="store_true")
    p.add_argument("--montage", help="PNG path for a grid of images with contours")
    p.add_argument("--n", type=int, default=16, help="samples in the montage")
    p.set_defaults(handler=cmd_inspect)

    p = commands.add_parser("train", help="train a U-Net on a prepared data set")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", help="YAML file of options (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_train_arguments(p)
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser("demo", help="phantom -> prepare -> train -> evaluate -> predict, on the CPU")
    p.add_argument("--out", default="demo-output")
    p.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except RvsegError as exc:
        print(f"rvseg: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("rvseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
