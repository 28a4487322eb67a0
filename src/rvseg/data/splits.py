"""Patient-wise splits: no patient ever contributes slices to two splits.

Three ways to choose the validation patients, in order of precedence:

1. fold ``k`` of ``n`` folds, after a seeded shuffle of the sorted patient list (so that a
   cross-validation run can reuse a recipe whose config names a fixed validation list);
2. an explicit list (``--val-patients P13,P14,P15,P16``);
3. a seeded share of the patients (default 20%, at least one).

Then :func:`training_share` draws the study's "share of the training data" (100/80/70/40 %) as
whole slices, seeded, spread across the training patients; validation is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvseg.errors import ConfigError


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]


def split_patients(
    patients: list[str],
    *,
    val_patients: list[str] | None = None,
    fold: int | None = None,
    folds: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> Split:
    """Split patient ids into training and validation patients (see module docstring)."""
    patients = sorted(set(patients))
    if len(patients) < 2:
        raise ConfigError(f"a patient-wise split needs at least 2 patients, the data set has {len(patients)}")
    if folds is not None or fold is not None:
        if folds is None:
            raise ConfigError("--fold needs --folds (the number of folds)")
        if fold is None:
            raise ConfigError("--folds without --fold trains every fold: `rvseg train --folds N`, or "
                              "rvseg.api.train_folds in Python; train() trains one fold")
        if not 2 <= folds <= len(patients):
            raise ConfigError(f"--folds must be between 2 and the number of patients ({len(patients)}), not {folds}")
        if not 0 <= fold < folds:
            raise ConfigError(f"--fold must be between 0 and {folds - 1}, not {fold}")
        order = np.random.default_rng(seed).permutation(len(patients))
        val = sorted(patients[i] for i in np.array_split(order, folds)[fold])
    elif val_patients:
        unknown = sorted(set(val_patients) - set(patients))
        if unknown:
            raise ConfigError(f"validation patient(s) {', '.join(unknown)} not in the data set "
                              f"(it has {', '.join(patients)})")
        val = sorted(set(val_patients))
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"the validation share must be between 0 and 1, not {val_fraction}")
        n_val = max(1, round(val_fraction * len(patients)))
        order = np.random.default_rng(seed).permutation(len(patients))
        val = sorted(patients[i] for i in order[:n_val])
    train = [p for p in patients if p not in set(val)]
    if not train:
        raise ConfigError("the split leaves no training patient")
    return Split(train=train, val=val)


def training_share(indices: np.ndarray, patients_of: list[str], fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the training slices, drawn within each patient.

    Args:
        indices: int (N,) indices of the training slices.
        patients_of: patient id of each of those slices (same length).
        fraction: share in (0, 1].
        seed: draw seed.

    Returns:
        sorted int array of the kept indices; every training patient keeps round(fraction * n)
        of its n slices (at least one), so the share is spread across patients, as in the study.
        The shares of one seed are nested (the 40 % slices are among the 70 %, those among the
        80 %): each patient's slices are shuffled once and the first ones kept, so a smaller share
        only takes slices away.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--fraction must be in (0, 1], not {fraction}")
    if fraction == 1.0:
        return np.sort(indices)
    rng = np.random.default_rng(seed)
    patients_of = np.asarray(patients_of)
    kept = []
    for patient in sorted(set(patients_of.tolist())):
        own = indices[patients_of == patient]
        n_keep = max(1, round(fraction * len(own)))
        kept.append(rng.permutation(own)[:n_keep])
    return np.sort(np.concatenate(kept))
