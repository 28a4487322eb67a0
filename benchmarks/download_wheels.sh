#!/usr/bin/env bash
# Fill wheels/ (git-ignored) with what benchmarks/gpu_check.sh needs on a GPU machine that reaches no
# package registry. Run it here, then name wheels in the device call's carry list.
#
# The GPU image has python3 3.12 with torch, numpy, scipy, scikit-image, matplotlib and packaging,
# but not pydicom (imported by `rvseg phantom` and, through the format registry, by `rvseg prepare`)
# or nibabel (the ACDC reader, imported by the same registry): pure-Python wheels. PyYAML is listed
# in the image today, but nothing promises it, and without it no `rvseg` command starts (the CLI
# reads its options through it), so it is fetched too: a binary wheel, for the GPU machine's Python
# and for this checkout's (gpu_check.sh --smoke installs the same folder here, and pip picks the
# wheel that fits each interpreter). Versions are pinned to this checkout's .venv. The sweeps need
# optuna and what it imports that the image lacks: alembic, colorlog, Mako (pure Python) and
# SQLAlchemy (binary, fetched like PyYAML; its greenlet is only for asyncio). monai (tests only) is not
# fetched.
#
#   bash benchmarks/download_wheels.sh          # wheels only
#   bash benchmarks/download_wheels.sh --data   # also copy the RVSC PNG set into wheels/rvsc-train-png:
#                                               # ../shared does not travel to the GPU machine, wheels/ does
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${WHEELS_DIR:-$REPO/wheels}
PY=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PY ]] || PY=python3
GPU_PYTHON_VERSION=${GPU_PYTHON_VERSION:-3.12}
WITH_DATA=0
for arg in "$@"; do
    case $arg in
        --data) WITH_DATA=1 ;;
        *) echo "usage: $0 [--data]" >&2; exit 2 ;;
    esac
done

version_of() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

LOCAL_PYTHON_VERSION=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

mkdir -p "$DEST"
PURE=()
for package in pydicom nibabel optuna alembic colorlog mako; do
    PURE+=("$package==$(version_of "$package")")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$GPU_PYTHON_VERSION" -d "$DEST" \
    "${PURE[@]}"
for version in $(printf '%s\n' "$GPU_PYTHON_VERSION" "$LOCAL_PYTHON_VERSION" | sort -u); do
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEST" "pyyaml==$(version_of pyyaml)" "sqlalchemy==$(version_of sqlalchemy)"
done

if (( WITH_DATA )); then
    SOURCE=$REPO/../shared/data/rvsc-train-png
    [[ -d $SOURCE ]] || { echo "no RVSC PNG set at $SOURCE" >&2; exit 1; }
    rm -rf "$DEST/rvsc-train-png"
    cp -r "$SOURCE" "$DEST/rvsc-train-png"
fi
ls -l "$DEST"
du -sh "$DEST"
