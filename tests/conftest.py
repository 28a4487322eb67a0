"""Shared fixtures.

The real data sets live in ``../shared/data`` beside the repository (never copied into it). In CI
(``CI=true``) they must be there, so a missing folder fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


def synthetic_report(n_patients: int = 5, per_patient: int = 8, shape=(48, 40), seed: int = 0):
    """A small in-memory ReadReport of noisy disks (endo) inside rings (epi), 1 mm spacing."""
    import numpy as np

    from rvseg.data.sample import ReadReport, Sample

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    report = ReadReport(format="synthetic", labels=("endo", "epi"))
    for p in range(n_patients):
        for k in range(per_patient):
            cy, cx = rng.uniform(0.35, 0.65) * shape[0], rng.uniform(0.35, 0.65) * shape[1]
            radius = rng.uniform(0.08, 0.2) * min(shape)
            distance2 = (rows - cy) ** 2 + (cols - cx) ** 2
            endo, epi = distance2 < radius**2, distance2 < (radius + 2) ** 2
            image = (0.3 + 0.5 * endo + 0.2 * (epi & ~endo) + rng.normal(0, 0.1, shape)).astype(np.float32)
            report.samples.append(Sample(
                id=f"S{p:02d}-{k:04d}", patient=f"S{p:02d}", image=image, masks={"endo": endo, "epi": epi},
                spacing_mm=(1.0, 1.0), slice=str(k // 2), frame=k, phase="ED" if k % 2 == 0 else "ES"))
    return report


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared data set of 5 synthetic patients x 8 slices of 48 x 40 (no files read)."""
    from rvseg.data.prepare import PrepareOptions, write_prepared

    out = tmp_path_factory.mktemp("tiny") / "dataset"
    write_prepared(synthetic_report(), out, PrepareOptions(normalize="none"))
    return out
