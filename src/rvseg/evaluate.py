"""``rvseg evaluate``: the RVSC challenge's metrics of a checkpoint, or an ensemble, on a prepared data set.

**Which samples** (``split``): ``val``, the checkpoint's own validation patients; ``test``, the
patients of the data set in neither the checkpoint's training nor validation list; ``all``, every
sample. Several checkpoints are evaluated as one ensemble (``mean`` or ``vote``, as ``rvseg predict``
combines them): ``val`` then needs the checkpoints to share one validation list (e.g. seeds of one
split), and ``test`` leaves out every patient that any of them trained or validated on, so the
models of a cross-validation are scored as an ensemble only on patients none of them saw (with
``cv``, each on its own validation patients instead: below).

**Cross-validation** (``cv``). The checkpoints are the folds of one cross-validation: those validated
on the same patients form one fold (an ensemble where there are several, such as seeds), and the folds
must validate on disjoint patients. Each fold is scored on its own validation patients (``val`` split)
and the rows are pooled, so the summary's figures are the cross-validation's over every validation
image; ``folds`` adds each fold's checkpoints, patients and overall summary, and ``fold_mean`` the mean
of the folds' mean Dice, HD and HD95 (folds of unequal size weigh equally there). ``fold_mean`` also
gives the mean Dice's 95% interval over patients (``dice_ci95``): the patients of each fold are drawn
again with replacement (2000 draws, a fixed seed) and the fold mean recomputed, each fold's spread
widened by sqrt(n / (n - 1)) for its n patients (a bootstrap of few patients is too narrow); the interval
is the fold mean plus or minus Student's t (n - 1 degrees of freedom per fold, summed) times the spread
of the drawn fold means, kept within [0, 1]; none where a fold has a single patient (leave one patient
out). It says how much the figure owes to which patients were in the study (the
images of one patient are not independent, so they are drawn together). It is approximate: with 4
patients per fold it covered the true mean in 94.9% and 95.2% of 1000 simulated cross-validations (4 x 4
patients, two spreads between and within patients).

**Slice levels.** Each sample is also placed at the ``base``, ``mid`` or ``apex`` third of its
patient's stack at its phase: the stack's distinct slice positions (its slice locations when every
sample has one, else its slice numbers) are ordered, the end whose reference masks of the first label
are larger is the base (the RV tapers to the apex), and the positions are cut into thirds (2
positions: base and apex); every sample at a position gets that position's level. A stack without
positions, with a single position, or without the first label gets level ``unknown``. Apical slices
are where RV segmentation fails most, so the summary gives Dice and HD per level.

**Volumes and ejection fraction.** When the labels include the cavity (``endo``, or ACDC's ``rv``:
the RV, or the LV on Sunnybrook data) and the samples have a pixel spacing, a slice location and an
ED or ES phase, each patient's EDV, ESV and EF are computed twice by :mod:`rvseg.volumes` (summation
of discs over the slice spacing, phases as given): from the reference masks and from the predicted
ones, over the same evaluated slices (the annotated ones, so a partly annotated stack gives a
partial volume for both). ED slices without an ES sample, where the ES slices are a subset of them
(experts leave the basal slice out at ES, where the RV has left it), count as empty at ES on both
sides (:func:`rvseg.volumes.fill_missing_es`), so predicted false positives there go uncounted. On a
resized data set the areas are those of the resampled masks. The summary's ``volumes`` holds them
per patient with their errors, and their agreement over the patients (bias, sd, mean absolute error,
Pearson r; :func:`rvseg.volumes.agreement`), the clinical measures the ACDC challenge reports. Notes
say what was left out and why.

A label a sample does not carry (e.g. a Sunnybrook epicardium) is unknown, not empty: that
(sample, label) is left out and counted as ``n_absent``.

**How.** Each sample is segmented from its real extent (the stacking padding cropped using
``height``/``width``) as :mod:`rvseg.inference` describes, at the data set's resolution and
post-processed as ``rvseg predict`` does (:mod:`rvseg.postprocess`; by default ``stack``: one region
per label, chosen through the patient's stack at its ED or ES phase; ``largest`` per image, or
``none`` for the raw thresholded output, ``--no-postprocess``), and compared
with its reference mask by :func:`rvseg.metrics.segmentation_metrics`: Dice, Jaccard, sensitivity,
precision, Hausdorff distance and HD95, areas. Distances are in mm from the data set's pixel
spacing (for a resized set, the spacing after resizing); for samples without spacing they are in
pixels and areas in px^2, and the summary's ``units`` says so (``mixed``: the means of distances and
areas then leave the pixel rows out, never averaging mm with px). Empty masks follow the rule of
:mod:`rvseg.metrics` (both empty: Dice 1, HD 0; one empty: Dice 0, HD undefined), and the summary
counts each case.

**Output folder** ``EVAL/`` (written to a temporary sibling and renamed into place, so it is never
half-written): ``per_case.csv`` (one row per sample and label), ``summary.json`` (per label: mean and sd
overall, per patient, per phase and per slice level (``by_slice_level``), the ED/ES table of the RVSC
results, empty-case counts, the settings and the checkpoints' checksums), ``examples_best.png`` and
``examples_worst.png`` (the samples of highest and lowest Dice of the first label, with reference and
predicted contours), ``dice_histogram.png``, and with volumes ``volumes.csv`` (one row per patient:
reference and predicted EDV, ESV and EF, and their differences). With ``save_scores``
(``--save-scores``) also ``scores.npz``, the score maps before post-processing, for studying
thresholds, post-processing or ensembles later without the checkpoints: ``ids`` (the N sample ids, in
``per_case.csv``'s order), ``labels`` (the L label names) and ``score_K`` for the K-th id, float32
(L, H, W) at the sample's real extent, so post-processing them gives exactly the masks scored. A
score is the foreground probability for filled targets (the models' mean for an ensemble, with TTA
when asked) and the filled score of :mod:`rvseg.inference` for the others; foreground is
``score > 0.5``.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from rvseg import __version__
from rvseg.checks import as_path, as_paths, check_choice, check_exists, finite_or_none
from rvseg.data import acdc
from rvseg.data.dataset import PreparedDataset, load_dataset
from rvseg.errors import ConfigError, DataError
from rvseg.inference import Predictor, prepared_inputs
from rvseg.io import atomic_folder, check_output_folder, checksum, json_safe, write_csv, write_json
from rvseg.metrics import METRIC_FIELDS, segmentation_metrics, summarize
from rvseg.postprocess import check_rule, postprocess_scores, stack_positions
from rvseg.report.figures import ExamplePanel, draw_dice_histogram, draw_examples
from rvseg.volumes import (
    VOLUME_KEYS,
    SliceArea,
    agreement,
    cavity_label,
    chamber,
    fill_missing_es,
    no_cavity_note,
    partly_positioned,
    partly_positioned_notes,
    stack_volumes,
    volume_errors,
)

SPLITS = ("val", "test", "all")
#: Numeric fields of a metric row that are summarised (mean, sd).
SUMMARY_METRICS = tuple(name for name in METRIC_FIELDS if name not in ("empty", "unit"))
#: Metrics in mm or mm^2, or in px and px^2 for a sample without pixel spacing.
SCALED_METRICS = tuple(name for name in SUMMARY_METRICS if name.startswith(("hd", "area")))
PER_CASE_FIELDS = ("id", "patient", "phase", "slice", "slice_level", "frame", "label", *METRIC_FIELDS)
#: Columns of ``volumes.csv``: per patient, the reference (truth) and predicted volumes and their difference.
VOLUME_ERROR_FIELDS = ("patient", "slices", "ed_slices", "es_slices", "slice_spacing_mm",
                       *(f"{key}_{side}" for key in VOLUME_KEYS for side in ("truth", "pred", "error")))
#: Slice levels from base to apex (module docstring); samples that cannot be placed get ``unknown``.
LEVELS = ("base", "mid", "apex")
#: Examples in each of examples_best.png and examples_worst.png.
N_EXAMPLES = 6
EMPTY_RULE = ("both masks empty: Dice, Jaccard, sensitivity, precision 1 and HD 0; one mask empty: Dice and Jaccard "
              "0, HD and HD95 undefined (left out of their means, counted in n_hd_undefined)")


def evaluate(checkpoints: str | Path | Sequence[str | Path], dataset: str | Path, split: str = "val",
             out: str | Path | None = None, *, ensemble: str = "mean", tta: bool = False, postprocess: str = "stack",
             batch_size: int = 16, device: str = "auto", force: bool = False, save_scores: bool = False,
             cv: bool = False) -> dict:
    """Evaluate a checkpoint, or an ensemble of several, on a prepared data set (module docstring).

    Args:
        checkpoints: a checkpoint file or a run folder (its ``best.pt``, else ``last.pt``), or several.
        dataset: a folder written by ``rvseg prepare``.
        split: ``val``, ``test`` or ``all``.
        out: the output folder, or None to only compute and return the summary.
        ensemble: how several checkpoints' outputs are combined: ``mean`` or ``vote``.
        tta: flip test-time augmentation.
        postprocess: ``stack``, ``largest`` or ``none`` (:mod:`rvseg.postprocess`; as ``rvseg predict``).
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the default: CUDA where there is one).
        force: replace an existing non-empty ``out``.
        save_scores: also write ``out/scores.npz``, the score maps before post-processing (module
            docstring); needs ``out``.
        cv: the checkpoints are the folds of a cross-validation (module docstring); needs ``split="val"``.

    Returns:
        the summary (also ``out/summary.json``); with ``out``, ``summary["files"]`` lists the files.
        ``summary["labels"][label]`` holds ``overall``, ``by_patient[patient]``, ``by_phase["ED"|"ES"]``
        and ``by_slice_level["base"|"mid"|"apex"]``, each ``{"n", "n_both_empty", ..., "metrics":
        {metric: {"mean", "sd", "n"}}}`` for the metrics of :func:`rvseg.metrics.segmentation_metrics`
        (``dice``, ``hd``, ``hd95``, ...), so a patient's mean Dice is
        ``summary["labels"]["endo"]["by_patient"]["P15"]["metrics"]["dice"]["mean"]``; ``table`` is the
        ED/ES table. ``summary["units"]`` says whether distances are in mm or px, and
        ``summary["volumes"]`` holds EDV, ESV and EF per patient, predicted against reference
        (:func:`cavity_volumes`). The per-image rows are ``out/per_case.csv``. With ``cv``,
        ``summary["folds"][k]`` holds fold k's ``checkpoints``, ``patients`` and ``labels[label]`` (its
        ``overall``), and ``summary["fold_mean"][label][metric]`` the mean over the folds.

    Raises:
        ConfigError: an unknown split, ensemble or post-processing rule, checkpoints that disagree on
            their preparation, a val split of checkpoints validated on different patients, or a data set
            normalised unlike the checkpoints'; with ``cv``, another split than val, fewer than two folds or
            a patient validated in two.
        DataError: an unreadable checkpoint or data set, labels the data set lacks, or ``out`` not empty.
    """
    check_choice(split, SPLITS, "--split")
    check_rule(postprocess)
    if cv and split != "val":
        raise ConfigError(f"--cv scores each fold on its own validation patients, so it takes --split val, not {split}")
    out = as_path(out, "out") if out is not None else None
    if save_scores and out is None:
        raise ConfigError("save_scores needs an output folder (out)")
    checkpoints, dataset = as_paths(checkpoints, "checkpoints"), as_path(dataset, "dataset")
    if out is not None:
        check_output_folder(out, force, inputs=[dataset, *checkpoints])
    # Before the models: a stray word on the command line becomes the data set, and is named as missing
    # instead of the data set being blamed as a run folder.
    check_exists(dataset)
    predictor = Predictor.from_checkpoints(checkpoints, ensemble=ensemble, tta=tta, batch_size=batch_size,
                                           device=device)
    data = load_dataset(dataset)
    channels = data.label_indices(predictor.labels)
    folds = cv_folds(predictor) if cv else [predictor]
    parts = [split_scores(fold, data, split) for fold in folds]
    indices = np.concatenate([fold_indices for fold_indices, _, _ in parts])
    patients = sorted({patient for _, fold_patients, _ in parts for patient in fold_patients})
    scores = [score for _, _, fold_scores in parts for score in fold_scores]
    # The folds' patients are disjoint, so post-processing them pooled joins no two folds' stacks.
    stacks, positions = stack_keys(data, indices)
    predictions = postprocess_scores(scores, postprocess, stacks, positions,
                                     exclusive=acdc.exclusive_labels(predictor.labels))
    rows = case_rows(data, indices, predictions, predictor.labels, channels)
    summary = label_summaries(rows, predictor.labels)
    if cv:
        summary["folds"] = fold_summaries(rows, folds, [fold_patients for _, fold_patients, _ in parts],
                                          predictor.labels)
        summary["fold_mean"] = fold_means(summary["folds"], predictor.labels)
        for label in predictor.labels:
            summary["fold_mean"][label]["dice_ci95"] = fold_mean_interval(
                [row for row in rows if row["label"] == label], [fold["patients"] for fold in summary["folds"]])
        note = cv_coverage_note(predictor.data_infos, data.patients)
        if note:
            summary["cv_note"] = note
    summary.update(
        volumes=cavity_volumes(data, rows, predictor.labels),
        checkpoints=[str(path) for path in predictor.checkpoints],
        checkpoint_checksums=[checksum(path) for path in predictor.checkpoints],
        dataset=str(data.root),
        dataset_content_hash=data.meta.get("content_hash", ""),
        same_data_as_training=all(data.meta.get("content_hash") == info.get("content_hash")
                                  for info in predictor.data_infos),
        split=split,
        patients=patients,
        n_samples=len(indices),
        settings={"ensemble": ensemble if len(predictor.models) > len(folds) else None, "tta": tta, "cv": cv,
                  "save_scores": save_scores,
                  "postprocess": postprocess, "mask_style": predictor.mask_style, "batch_size": batch_size,
                  "device": str(predictor.device),
                  "model_prepare": predictor.prepare, "dataset_prepare": data.meta.get("options", {})},
        empty_rule=EMPTY_RULE,
        rvseg_version=__version__,
    )
    summary = json_safe(summary)
    if out is not None:
        summary["files"] = write_evaluation(out, rows, summary, data, indices, predictions, predictor.labels,
                                            channels, scores if save_scores else None)
    return summary


def split_scores(predictor: Predictor, data: PreparedDataset, split: str) -> tuple[np.ndarray, list[str],
                                                                                   list[np.ndarray]]:
    """The samples of ``split`` (:func:`split_indices`): their indices in the data set, the split's patients, and
    their score maps before post-processing (float32 (L, h, w) at each sample's real extent)."""
    indices, patients = split_indices(data, predictor.data_infos, split)
    inputs = prepared_inputs(predictor, data, indices)
    return indices, patients, list(predictor.score_maps(inputs, [data.extent(i) for i in indices]))


def cv_folds(predictor: Predictor) -> list[Predictor]:
    """The folds of a cross-validation among ``predictor``'s models: the models validated on the same
    patients form one fold (an ensemble combined as ``predictor`` combines), in order of first appearance.

    Raises:
        ConfigError: a model without validation patients, fewer than two folds, or a patient validated
            in two folds.
    """
    members: dict[frozenset[str], list[int]] = {}
    for k, info in enumerate(predictor.data_infos):
        validated = frozenset(info.get("val_patients", []))
        if not validated:
            raise ConfigError(f"{predictor.checkpoints[k]} was validated on no patient, so it is no fold of a "
                              "cross-validation (--cv)")
        members.setdefault(validated, []).append(k)
    if len(members) < 2:
        raise ConfigError("--cv needs the runs of at least two folds (runs validated on different patients); these "
                          f"were all validated on {', '.join(sorted(next(iter(members))))}")
    fold_of: dict[str, int] = {}
    groups = list(members.items())
    for fold, (validated, _) in enumerate(groups):
        for patient in sorted(validated):
            if patient in fold_of:
                first, second = (predictor.checkpoints[groups[f][1][0]] for f in (fold_of[patient], fold))
                raise ConfigError(f"patient {patient} is validated by two folds ({first} and {second}); the folds of a "
                                  "cross-validation validate on disjoint patients")
            fold_of[patient] = fold
    return [dataclasses.replace(predictor, models=[predictor.models[k] for k in ks],
                                checkpoints=[predictor.checkpoints[k] for k in ks],
                                data_infos=[predictor.data_infos[k] for k in ks]) for _, ks in groups]


def cv_coverage_note(infos: Sequence[dict], dataset_patients: Sequence[str]) -> str | None:
    """A note naming the data set's patients that the folds trained on but none validated, as when a fold's
    run is missing from the command line (the pooled figures then cover part of the cross-validation)."""
    validated = set().union(*(info.get("val_patients", []) for info in infos))
    trained = set().union(*(info.get("train_patients", []) for info in infos))
    unvalidated = sorted(trained & set(dataset_patients) - validated)
    if not unvalidated:
        return None
    shown = ", ".join(unvalidated[:6]) + (", ..." if len(unvalidated) > 6 else "")
    return (f"{len(unvalidated)} patient(s) the folds trained on are validated by no fold ({shown}): is a fold's "
            f"run missing? The figures cover the {len(validated & set(dataset_patients))} validated patient(s) only")


def fold_summaries(rows: Sequence[dict], folds: Sequence[Predictor], fold_patients: Sequence[Sequence[str]],
                   labels: Sequence[str]) -> list[dict]:
    """Per fold of a cross-validation: its checkpoints, validation patients and per label the overall
    summary of its rows (those of its patients)."""
    summaries = []
    for fold, patients in zip(folds, fold_patients, strict=True):
        validated = set(patients)
        per_label = label_summaries([row for row in rows if row["patient"] in validated], labels)["labels"]
        summaries.append({"checkpoints": [str(path) for path in fold.checkpoints], "patients": list(patients),
                          "labels": {label: per_label[label]["overall"] for label in labels}})
    return summaries


#: Metrics whose mean over the folds ``fold_mean`` gives.
FOLD_MEAN_METRICS = ("dice", "hd", "hd95")


def fold_means(folds: Sequence[dict], labels: Sequence[str]) -> dict:
    """Per label and metric of :data:`FOLD_MEAN_METRICS`: the mean over the folds of each fold's mean
    (None where no fold has one)."""
    means = {}
    for label in labels:
        means[label] = {}
        for name in FOLD_MEAN_METRICS:
            values = [fold["labels"][label]["metrics"][name]["mean"] for fold in folds]
            values = [value for value in values if finite_or_none(value) is not None]
            means[label][name] = float(np.mean(values)) if values else None
    return means


def fold_mean_interval(rows: Sequence[dict], fold_patients: Sequence[Sequence[str]], draws: int = 2000,
                       seed: int = 0) -> list[float] | None:
    """Approximate 95% interval of the fold mean of per-image Dice over patients (module docstring).

    Args:
        rows: the metric rows of one label (``patient`` and ``dice`` used; rows without a finite Dice skipped).
        fold_patients: each fold's validation patients.

    Returns:
        ``[low, high]`` within [0, 1], or None when a fold has fewer than two patients with rows (a spread
        over patients needs two; a leave-one-patient-out CV has none within its folds).
    """
    rng = np.random.default_rng(seed)
    fold_draws, fold_means, degrees = [], [], 0
    for patients in fold_patients:
        sums, counts = np.zeros(len(patients)), np.zeros(len(patients))
        slot = {patient: k for k, patient in enumerate(patients)}
        for row in rows:
            dice = finite_or_none(row["dice"])
            if row["patient"] in slot and dice is not None:
                sums[slot[row["patient"]]] += dice
                counts[slot[row["patient"]]] += 1
        sums, counts = sums[counts > 0], counts[counts > 0]  # a patient without rows is no draw
        if len(counts) < 2:
            return None
        drawn = rng.integers(0, len(counts), size=(draws, len(counts)))
        fold_mean = sums.sum() / counts.sum()
        # The bootstrap's spread of a mean of n draws is sqrt((n - 1) / n) of the true one, 0.87 for the
        # 4 patients of a fold: widened back, as for a standard error with n - 1.
        widen = math.sqrt(len(counts) / (len(counts) - 1))
        fold_draws.append(fold_mean + widen * (sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1) - fold_mean))
        fold_means.append(fold_mean)
        degrees += len(counts) - 1
    # Student's t, not the normal 1.96, for the few patients the spread is estimated from.
    half_width = float(stats.t.ppf(0.975, degrees) * np.std(np.mean(fold_draws, axis=0)))
    centre = float(np.mean(fold_means))
    return [max(centre - half_width, 0.0), min(centre + half_width, 1.0)]  # Dice lies in [0, 1]


def split_indices(data: PreparedDataset, infos: Sequence[dict], split: str) -> tuple[np.ndarray, list[str]]:
    """Sample indices and patients of ``split`` (module docstring), using the checkpoints' patient lists.

    Raises:
        ConfigError: a val split of checkpoints validated on different patients.
        DataError: no sample of the split's patients is in the data set.
    """
    validated = [set(info.get("val_patients", [])) for info in infos]
    seen = set().union(*validated, *(info.get("train_patients", []) for info in infos))
    if split == "all":
        patients = data.patients
    elif split == "val":
        val = validated[0]
        if any(other != val for other in validated[1:]):
            raise ConfigError("the checkpoints were validated on different patients, so they have no common "
                              "val split; use --cv if they are the folds of a cross-validation, or --split test "
                              "(patients none of them saw) or all")
        patients = sorted(set(data.patients) & val)
        if not patients:
            listed = ", ".join(sorted(val)) or "none"
            raise DataError(f"none of the validation patients of the checkpoint(s) ({listed}) is in this data set; "
                            "use --split all (every patient), or test (those the checkpoint never saw)", data.root)
    else:
        patients = sorted(set(data.patients) - seen)
        if not patients:
            raise DataError(f"every patient id of this data set ({', '.join(data.patients[:4])}"
                            f"{', ...' if len(data.patients) > 4 else ''}) is one the checkpoint trained or validated "
                            "on, so there is no test patient (patients are matched by id; for other data whose ids "
                            "merely repeat, use --split all)", data.root)
    return data.indices_of_patients(patients), patients


def case_rows(data: PreparedDataset, indices: Sequence[int], predictions: Sequence[np.ndarray],
              labels: Sequence[str], channels: Sequence[int]) -> list[dict]:
    """One metric row per (sample, label) the sample carries, in sample order, with the sample's slice
    level (:func:`slice_levels`).

    Args:
        data: the prepared data set.
        indices: the samples evaluated.
        predictions: bool (L, h, w) masks at each sample's real extent.
        labels: the L label names; ``channels`` their mask channels in ``data``.
    """
    rows = []
    levels = slice_levels(data, indices, channels[0])
    for index, predicted in zip(indices, predictions, strict=True):
        row = data.rows[index]
        height, width = data.extent(index)
        spacing = data.spacing(index)
        for k, (label, channel) in enumerate(zip(labels, channels, strict=True)):
            if not data.present[index, channel]:
                continue
            reference = data.masks[index, channel, :height, :width] > 0
            rows.append({"id": row["id"], "patient": row["patient"], "phase": row["phase"], "slice": row["slice"],
                         "slice_level": levels[index], "frame": row["frame"], "label": label,
                         **segmentation_metrics(predicted[k], reference, spacing)})
    return rows


def slice_levels(data: PreparedDataset, indices: Sequence[int], channel: int) -> dict[int, str]:
    """``base`` / ``mid`` / ``apex`` (or ``unknown``) for each sample of ``indices`` (module docstring).

    Args:
        data: the prepared data set.
        indices: the samples evaluated; each is placed among those of its patient and phase.
        channel: the mask channel whose reference areas orient the stack (samples without it count
            only by their position).
    """
    levels = dict.fromkeys(indices, "unknown")
    stacks, positions = phase_positions(data, indices)
    members: dict[tuple[str, str], dict[int, float]] = {}
    for index, stack, position in zip(indices, stacks, positions, strict=True):
        if position is not None:
            members.setdefault(stack, {})[index] = position
    for position_of in members.values():
        ordered = sorted(set(position_of.values()))
        area = {position: 0 for position in ordered}
        for index, position in position_of.items():
            if data.present[index, channel]:
                area[position] += int(data.masks[index, channel].sum())
        third = max(len(ordered) // 3, 1)
        ends = sum(area[p] for p in ordered[:third]), sum(area[p] for p in ordered[-third:])
        if len(ordered) < 2 or ends[0] == ends[1]:
            continue  # one position, or no reference to tell the base from the apex
        if ends[1] > ends[0]:
            ordered.reverse()
        level_of = {position: ("base", "apex")[rank] if len(ordered) == 2 else LEVELS[3 * rank // len(ordered)]
                    for rank, position in enumerate(ordered)}
        for index, position in position_of.items():
            levels[index] = level_of[position]
    return levels


def phase_positions(data: PreparedDataset, indices: Sequence[int]) -> tuple[list, list]:
    """Each sample's (patient, phase) and its position in that stack (:func:`rvseg.postprocess.stack_positions`:
    slice locations, else slice numbers, in one unit per stack; None where neither is known for the whole stack)."""
    rows = [data.rows[index] for index in indices]
    stacks = [(row["patient"], row["phase"]) for row in rows]
    return stacks, stack_positions(stacks, [row.get("slice_location") for row in rows],
                                   [row.get("slice") for row in rows])


def stack_keys(data: PreparedDataset, indices: Sequence[int]) -> tuple[list, list]:
    """For the ``stack`` post-processing: each sample's stack at one instant, (patient, phase), and its
    position along it (:func:`phase_positions`); None for both where the phase is not ED or ES (the
    samples of an unknown phase may be several instants) or the stack has no positions."""
    stacks, positions = phase_positions(data, indices)
    known = [stack[1] in ("ED", "ES") and position is not None for stack, position in zip(stacks, positions,
                                                                                          strict=True)]
    return ([stack if ok else None for stack, ok in zip(stacks, known, strict=True)],
            [position if ok else None for position, ok in zip(positions, known, strict=True)])


def label_summaries(rows: Sequence[dict], labels: Sequence[str]) -> dict:
    """Per label: summaries overall, per patient, per phase and per slice level, the ED/ES table and the units."""
    units = sorted({row["unit"] for row in rows})
    if len(units) > 1:  # a mean of mm and px is no number: the pixel rows' distances and areas are left out
        rows = [{**row, **dict.fromkeys(SCALED_METRICS, math.nan)} if row["unit"] == "px" else row for row in rows]
    per_label = {}
    for label in labels:
        label_rows = [row for row in rows if row["label"] == label]
        summary = summarize(label_rows, by=("patient", "phase", "slice_level"), metrics=SUMMARY_METRICS)
        by_level = summary["by"]["slice_level"]
        per_label[label] = {
            "n": len(label_rows),
            "overall": summary["overall"],
            "by_patient": summary["by"]["patient"],
            "by_phase": summary["by"]["phase"],
            "by_slice_level": {level: by_level[level] for level in (*LEVELS, "unknown") if level in by_level},
            "table": rvsc_table(summary),
        }
    result = {"labels": per_label, "units": units[0] if len(units) == 1 else "mixed" if units else "mm"}
    if "px" in units:
        n_px = sum(1 for row in rows if row["unit"] == "px")
        result["unit_note"] = (f"{n_px} of {len(rows)} rows have no pixel spacing: their distances are in pixels "
                               "and areas in px^2" + ("; the means of those metrics leave them out (each "
                                                      "metric's n says how many rows it averages)"
                                                      if len(units) > 1 else ""))
    return result


def cavity_volumes(data: PreparedDataset, rows: Sequence[dict], labels: Sequence[str]) -> dict:
    """Reference and predicted volumes and EF per patient, and their agreement (module docstring).

    Args:
        data: the prepared data set.
        rows: the metric rows of :func:`case_rows`, whose reference and predicted areas (mm^2) are used.
        labels: the labels evaluated.

    Returns:
        ``{"label", "chamber" ("RV", or "LV" for Sunnybrook), "patients": {patient: {key: {"pred",
        "truth", "error", "relative_error"}, "slices", "ed_slices", "es_slices",
        "slice_spacing_mm"}}, "agreement": {key: {"n", "bias", "sd", "mae", "r"}}, "notes": [...]}``
        with the keys of :data:`rvseg.volumes.VOLUME_KEYS`; ``notes`` says what was left out and why.
    """
    label, chamber_name = cavity_label(labels), chamber(data.meta.get("format"))
    if label is None:
        return {"label": None, "chamber": chamber_name, "patients": {}, "agreement": {}, "notes": [no_cavity_note()]}
    sample_of = {row["id"]: row for row in data.rows}
    samples = [sample_of[row["id"]] for row in rows if row["label"] == label]
    partial = partly_positioned([sample["patient"] for sample in samples],
                                [finite_or_none(sample.get("position_mm")) for sample in samples])
    sides: dict[str, list[SliceArea]] = {"pred": [], "truth": []}
    left_out: dict[str, int] = {}
    for row in rows:
        if row["label"] != label:
            continue
        sample = sample_of[row["id"]]
        location = finite_or_none(sample.get("position_mm")) if row["patient"] not in partial else None
        if location is None:
            location = finite_or_none(sample.get("slice_location"))
        reason = volume_exclusion(row, location)
        if reason:
            left_out[reason] = left_out.get(reason, 0) + 1
            continue
        for side, area in (("pred", row["area_pred"]), ("truth", row["area_ref"])):
            sides[side].append(SliceArea(stack=row["patient"], id=row["id"], phase=row["phase"],
                                         slice_location=location, area_mm2=float(area),
                                         thickness_mm=finite_or_none(sample.get("slice_thickness_mm"))))
    notes = [f"{count} sample(s) left out: {reason}" for reason, count in left_out.items()]
    notes += partly_positioned_notes(partial)
    filled = {side: fill_missing_es(areas) for side, areas in sides.items()}
    notes += filled["truth"][1]
    volumes = {side: {item.stack: item for item in stack_volumes(areas)} for side, (areas, _) in filled.items()}
    errors = volume_errors({stack: item.to_dict() for stack, item in volumes["pred"].items()},
                           {stack: item.to_dict() for stack, item in volumes["truth"].items()})
    usable = {area.stack for area in sides["truth"]}  # the others are counted in the left-out notes
    for patient in sorted(usable - set(volumes["truth"])):
        notes.append(f"{patient}: no volume (fewer than two slice locations with a usable ED or ES sample)")
    for patient, item in volumes["truth"].items():
        notes += [f"{patient}: {note}" for note in item.notes]
        if item.ed_volume_ml is None or item.es_volume_ml is None:
            notes.append(f"{patient}: no {'ED' if item.ed_volume_ml is None else 'ES'} sample, so no EF")
        elif volumes["pred"][patient].ef_percent is None:
            notes.append(f"{patient}: the predicted EDV is 0, so no predicted EF (left out of the EF agreement)")
    size = data.meta.get("options", {}).get("size")
    if errors["patients"] and size:
        notes.append(f"areas are counted at the prepared size {size[0]} x {size[1]}: the reference volumes are "
                     "those of the resampled masks, not of the original contours")
    patients = {patient: {**item, "slices": volumes["truth"][patient].n_slices,
                          "ed_slices": volumes["truth"][patient].ed_slices,
                          "es_slices": volumes["truth"][patient].es_slices,
                          "slice_spacing_mm": volumes["truth"][patient].slice_spacing_mm}
                for patient, item in errors["patients"].items()}
    return {"label": label, "chamber": chamber_name, "patients": patients, "agreement": agreement(errors),
            "notes": notes}


def volume_exclusion(row: dict, location: float | None) -> str | None:
    """Why a metric row cannot enter a volume, or None: no spacing (areas in px), no slice location, no phase."""
    if row["unit"] != "mm":
        return "no pixel spacing"
    if location is None:
        return "no slice location"
    if row["phase"] not in ("ED", "ES"):
        return "phase not ED or ES"
    return None


def volume_rows(volumes: dict) -> list[dict]:
    """The rows of ``volumes.csv`` (one per patient) from the summary's ``volumes``."""
    counts = ("slices", "ed_slices", "es_slices", "slice_spacing_mm")
    return [{"patient": patient, **{name: item[name] for name in counts},
             **{f"{key}_{side}": item[key][side] for key in VOLUME_KEYS for side in ("truth", "pred", "error")}}
            for patient, item in volumes["patients"].items()]


def rvsc_table(summary: dict) -> dict:
    """The layout of the RVSC results tables: Dice and HD, mean and sd, at ED, ES and overall."""
    groups = {**{phase: stats for phase, stats in summary["by"]["phase"].items() if phase in ("ED", "ES")},
              "all": summary["overall"]}
    # hd_n: the rows HD averages: fewer than n where one mask is empty (HD undefined) or, in a set
    # mixing mm and px, where a sample has no pixel spacing.
    return {group: {"n": stats["n"], "hd_n": stats["metrics"]["hd"]["n"],
                    **{f"{name}_{stat}": stats["metrics"][name][stat] for name in ("dice", "hd", "hd95")
                       for stat in ("mean", "sd")}}
            for group, stats in groups.items()}


def write_evaluation(out: Path, rows: Sequence[dict], summary: dict, data: PreparedDataset, indices: Sequence[int],
                     predictions: Sequence[np.ndarray], labels: Sequence[str], channels: Sequence[int],
                     scores: Sequence[np.ndarray] | None = None) -> dict:
    """Write the output folder atomically (temporary sibling, then rename); returns name -> path."""
    files = {name: str(out / name) for name in ("per_case.csv", "summary.json", "examples_best.png",
                                                   "examples_worst.png", "dice_histogram.png")}
    if summary["volumes"]["patients"]:
        files["volumes.csv"] = str(out / "volumes.csv")
    if scores is not None:
        files["scores.npz"] = str(out / "scores.npz")
    with atomic_folder(out) as tmp:
        if scores is not None:
            write_scores(tmp / "scores.npz", [data.rows[i]["id"] for i in indices], labels, scores)
        write_csv(tmp / "per_case.csv", rows, PER_CASE_FIELDS)
        if "volumes.csv" in files:
            write_csv(tmp / "volumes.csv", volume_rows(summary["volumes"]), VOLUME_ERROR_FIELDS)
        best, worst = example_rows(rows, labels[0])
        position = {data.rows[index]["id"]: i for i, index in enumerate(indices)}
        for name, chosen, caption in (("examples_best.png", best, "highest"), ("examples_worst.png", worst, "lowest")):
            panels = [example_panel(data, indices[position[row["id"]]], predictions[position[row["id"]]], labels,
                                    channels, row) for row in chosen]
            draw_examples(panels, tmp / name, title=f"{caption} Dice ({labels[0]}), {summary['split']} split")
        dice = {label: [row["dice"] for row in rows if row["label"] == label] for label in labels}
        draw_dice_histogram(dice, tmp / "dice_histogram.png",
                            title=f"{summary['split']} split, {summary['n_samples']} samples")
        write_json(tmp / "summary.json", {**summary, "files": files})
    return files


def write_scores(path: Path, ids: Sequence[str], labels: Sequence[str], scores: Sequence[np.ndarray]) -> None:
    """``scores.npz`` (module docstring): one float32 array per sample, keyed by position, not by id
    (ids are free text, array names are not)."""
    np.savez_compressed(path, ids=np.asarray(ids, dtype=str), labels=np.asarray(labels, dtype=str),
                        **{f"score_{k}": np.asarray(score, dtype=np.float32) for k, score in enumerate(scores)})


def read_scores(path: str | Path) -> tuple[list[str], list[str], list[np.ndarray]]:
    """The sample ids, label names and float32 (L, H, W) score maps of a ``scores.npz``."""
    path = as_path(path, "scores")
    try:
        with np.load(path, allow_pickle=False) as archive:
            ids, labels = [str(i) for i in archive["ids"]], [str(label) for label in archive["labels"]]
            return ids, labels, [archive[f"score_{k}"].astype(np.float32) for k in range(len(ids))]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"not a scores.npz of rvseg evaluate ({error.__class__.__name__}: {error})", path) from None


def example_rows(rows: Sequence[dict], label: str) -> tuple[list[dict], list[dict]]:
    """The rows of highest and lowest Dice of ``label``.

    Cases where both masks are empty are left out of the best ones: a correct "nothing here" shows
    nothing. Ties are broken by id, so the choice is reproducible.
    """
    label_rows = [row for row in rows if row["label"] == label]
    shown = [row for row in label_rows if row["empty"] != "both"]
    best = sorted(shown, key=lambda row: (-row["dice"], row["id"]))[:N_EXAMPLES]
    worst = sorted(label_rows, key=lambda row: (row["dice"], row["id"]))[:N_EXAMPLES]
    return best, worst


def example_panel(data: PreparedDataset, index: int, predicted: np.ndarray, labels: Sequence[str],
                  channels: Sequence[int], row: dict) -> ExamplePanel:
    height, width = data.extent(index)
    references = {label: data.masks[index, channel, :height, :width] > 0
                  for label, channel in zip(labels, channels, strict=True) if data.present[index, channel]}
    hd = row["hd"]
    hd_text = "HD -" if finite_or_none(hd) is None else f"HD {hd:.1f} {row['unit']}"
    return ExamplePanel(image=data.images[index, 0, :height, :width],
                        predictions={label: predicted[k] for k, label in enumerate(labels)},
                        references=references,
                        title=f"{row['id']} {row['phase']}  Dice {row['dice']:.3f}  {hd_text}")


