"""Shared fixtures.

The real data sets live in ``../shared/data`` beside the repository (never copied into it). In CI
(``CI=true``) they must be there, so a missing folder fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import synthetic_report

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared data set of 5 synthetic patients x 8 slices of 48 x 40 (no files read)."""
    from rvseg.data.prepare import PrepareOptions, write_prepared

    out = tmp_path_factory.mktemp("tiny") / "dataset"
    write_prepared(synthetic_report(), out, PrepareOptions(normalize="none"))
    return out
