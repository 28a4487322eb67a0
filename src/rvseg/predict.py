"""``rvseg predict``: segment new images with one or more checkpoints, write masks, contours and volumes.

**Sources** (``src``): a DICOM, PNG / JPEG or NIfTI file, a folder of them, an RVSC or ACDC patient
folder (or a folder holding them), or a prepared data set, read by :func:`rvseg.data.sources.read_source`
(its module docstring says how each is found, ordered and grouped into stacks, and which files are
skipped or ignored).

**Output folder** ``PRED/`` (written to a temporary sibling and renamed into place):

- ``masks/<id>.png``: the predicted mask, 0 / 255, at the original image's size; with several
  labels, one ``masks/<id>-<label>.png`` per label.
- ``masks/<volume>.nii.gz`` for each NIfTI image read: its slices' masks, uint8, put back into the
  image's geometry (:func:`~rvseg.data.nifti.save_like`): 0 / 1 for one label; one label map in ACDC's
  values (rv 1, myo 2, lv 3, as the ACDC ground truths) for a model of ACDC labels; else one 0 / 1
  file ``<volume>-<label>.nii.gz`` per label (endo and epi overlap). A slice's image id is
  ``<volume>-sliceZZ`` (a 4D cine: ``<volume>-frameTT-sliceZZ``, TT counted from 1; an ACDC frame:
  ``patientNNN-frameFF-sliceZZ``, the id of the same sample in an ACDC prepared set).
- ``overlays/<id>.png``: the image with the boundary of each label's mask in colour (endo yellow,
  epi cyan).
- ``contours/<id>-icontour-auto.txt`` (label ``endo``) and ``<id>-ocontour-auto.txt`` (``epi``):
  the RVSC submission format, one ``x y`` line per point in the pixel coordinates of the original
  image, the boundary of the largest region (:func:`~rvseg.data.contours.mask_to_contour`); RVSC
  frames have ids ``PNN-FFFF``, so the files are named ``PNN-FFFF-icontour-auto.txt``. Other labels
  give ``<id>-<label>-contour-auto.txt``. An empty mask gives no file.
- ``predictions.csv``: one row per image: id, source, stack, slice location, position, trigger time, phase,
  size, spacing, and per label the area in pixels and mm^2 and the contour file.
- ``volumes.csv`` (when images have a pixel spacing): rows of ``level`` ``image`` (RV cavity area
  in mm^2 per slice and frame, with its phase), ``phase`` (the ED or ES volume in mL of a stack and
  the slices it sums) and ``stack`` (EDV, ESV, stroke volume, EF), computed by :mod:`rvseg.volumes` from the RV
  cavity label (``endo``, or ACDC's ``rv``): volumes need two or more slice locations; ED and ES are
  the phases the source gives, else the instants of largest and smallest total predicted volume
  (:func:`~rvseg.volumes.assign_phases`). Where phases are given, an ED slice at an end of the stack
  without an ES image counts as empty at ES, as in ``rvseg evaluate``. The slice spacing is measured
  between the planes' ImagePositionPatient along their normal (a prepared set's ``position_mm``), not
  between SliceLocation values (:func:`~rvseg.data.dicom.plane_positions`); the ``slice_location``
  column is the DICOM SliceLocation and ``position_mm`` the position used.
- ``skipped.csv`` and ``ignored.csv`` (``path, reason``), and ``summary.json`` (with ``notes``: what
  the reader of the numbers should know, e.g. non-finite NIfTI voxels replaced, a stack with one
  slice position and so no volume, or NIfTI images segmented by a model trained on another layout,
  whose orientation may differ).

Masks are post-processed by :mod:`rvseg.postprocess` (``postprocess``): by default ``stack``, one
region per label chosen through the slices of each stack at one instant (:func:`stack_instants`),
else ``largest`` per image or ``none``; holes filled. With any rule but ``none`` a written contour,
filled again, gives back the mask.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.io import imsave

from rvseg import __version__
from rvseg.checks import as_path, as_paths, check_exists
from rvseg.data import acdc
from rvseg.data.contours import contour_file_name, mask_to_contour, write_contour_file
from rvseg.data.nifti import NiftiVolume, save_like
from rvseg.data.sources import InputImage, Source, read_source
from rvseg.inference import Predictor, check_prepared_compatible, to_original_geometry
from rvseg.io import atomic_folder, check_output_folder, checksum, json_safe, write_csv, write_json
from rvseg.postprocess import check_rule, postprocess_scores, stack_positions
from rvseg.report.figures import overlay_image
from rvseg.volumes import (
    SliceArea,
    area_mm2,
    assign_phases,
    by_stack,
    cavity_label,
    chamber,
    fill_missing_es,
    frames_by_slice,
    no_cavity_note,
    stack_volumes,
)

#: Columns of volumes.csv: one row per image, per phase volume and per stack (``level``).
VOLUME_FIELDS = ("level", "stack", "id", "slice_location", "position_mm", "trigger_time", "frame", "phase", "area_mm2",
                 "slices", "slice_spacing_mm", "volume_ml", "ed_volume_ml", "es_volume_ml", "stroke_volume_ml",
                 "ef_percent", "es_rule")


def predict(checkpoints: str | Path | Sequence[str | Path], src: str | Path, out: str | Path, *,
            ensemble: str = "mean", tta: bool = False, postprocess: str = "stack", batch_size: int = 16,
            device: str = "auto", force: bool = False) -> dict:
    """Segment every image of ``src`` and write the output folder (module docstring).

    Args:
        checkpoints: a checkpoint file or run folder, or several, which form an ensemble.
        src: a DICOM, PNG/JPEG or NIfTI file, a folder of them, an RVSC or ACDC patient folder, or a
            prepared data set.
        out: the output folder.
        ensemble: ``mean`` or ``vote`` (see :mod:`rvseg.inference`).
        tta: flip test-time augmentation.
        postprocess: ``stack``, ``largest`` or ``none`` (:mod:`rvseg.postprocess`; module docstring).
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the default: CUDA where there is one).
        force: replace an existing non-empty ``out``.

    Returns:
        the summary (also ``out/summary.json``): counts, ``skipped`` (``{"path", "reason"}`` each),
        ``volumes`` (stack -> EDV, ESV, stroke volume, EF...), settings and the output files.

    Raises:
        DataError: ``src`` is missing, is a single file that is not an image, or holds no readable
            image; a checkpoint cannot be read; ``out`` is not empty.
        ConfigError: an invalid option, or checkpoints that cannot be combined.
    """
    out, src = as_path(out, "out"), as_path(src, "src")
    checkpoints = as_paths(checkpoints, "checkpoints")  # one model, or an ensemble
    check_output_folder(out, force, inputs=[src, *checkpoints])
    check_rule(postprocess)
    # Before the models: a stray word on the command line becomes the source, and is named as missing
    # instead of the source being blamed as a run folder.
    check_exists(src)
    predictor = Predictor.from_checkpoints(checkpoints, ensemble=ensemble, tta=tta, batch_size=batch_size,
                                           device=device)
    source = read_source(src, exclude=out)
    if source.dataset is not None:
        check_prepared_compatible(predictor, source.dataset)
    with atomic_folder(out) as tmp:
        nifti_masks = NiftiMasks(source.nifti, len(predictor.labels))
        records = segment_and_write(predictor, source.images, tmp, postprocess, nifti_masks)
        mask_files = nifti_masks.write(tmp / "masks", predictor.labels)
        volumes, notes, phases = write_volumes(tmp / "volumes.csv", source.images, records, predictor.labels)
        for record, phase in zip(records, phases, strict=True):
            record["phase"] = phase
        notes = list(dict.fromkeys([*source.notes, *orientation_notes(source, predictor),
                                    *scale_notes(source.images, predictor), *notes]))
        write_csv(tmp / "predictions.csv", records)
        write_csv(tmp / "skipped.csv", source.skipped, fieldnames=("path", "reason"))
        write_csv(tmp / "ignored.csv", source.ignored, fieldnames=("path", "reason"))
        summary = json_safe({
            "out": str(out), "source": str(src), "source_kind": source.kind, "n_images": len(records),
            "n_skipped": len(source.skipped), "skipped": source.skipped, "n_ignored": len(source.ignored),
            "ignored": source.ignored, "labels": predictor.labels,
            "checkpoints": [str(path) for path in predictor.checkpoints],
            "checkpoint_checksums": [checksum(path) for path in predictor.checkpoints],
            "ensemble": ensemble, "tta": tta, "postprocess": postprocess, "model_prepare": predictor.prepare,
            "chamber": chamber(predictor.prepare.get("format")), "volumes": {item["stack"]: item for item in volumes},
            "nifti_masks": mask_files, "notes": notes,
            "rvseg_version": __version__,
            "files": {name: str(out / name) for name in ("masks", "overlays", "contours", "predictions.csv",
                                                          "volumes.csv", "skipped.csv", "ignored.csv",
                                                          "summary.json")
                      if (tmp / name).exists() or name == "summary.json"},
        })
        write_json(tmp / "summary.json", summary)
    return summary


# ---------------------------------------------------------------- segmenting and writing


def segment_and_write(predictor: Predictor, images: Sequence[InputImage], folder: Path,
                      postprocess: str = "stack", nifti_masks: NiftiMasks | None = None) -> list[dict]:
    """Segment the images, write their masks, overlays and contours; one record each, in image order.

    Under the ``stack`` post-processing the images of one stack at one instant (:func:`stack_instants`)
    are segmented in one unit (:func:`segmenting_units`). The masks of images cut from NIfTI images
    are also handed to ``nifti_masks``.
    """
    for name in ("masks", "overlays", "contours"):
        (folder / name).mkdir()
    instants, positions = stack_instants(images) if postprocess == "stack" else ([None] * len(images),) * 2
    records: list[dict | None] = [None] * len(images)
    for unit in segmenting_units(instants, predictor.batch_size):
        chunk = [images[i] for i in unit]
        pixels = [image.read_pixels() for image in chunk]  # held for this unit only
        inputs = [predictor.to_model_input(values) if image.prepared else predictor.preprocess(values)
                  for image, values in zip(chunk, pixels, strict=True)]
        scores = list(predictor.score_maps(inputs, [image.shape for image in chunk]))
        masks = postprocess_scores(scores, postprocess, [instants[i] for i in unit], [positions[i] for i in unit],
                                   exclusive=acdc.exclusive_labels(predictor.labels))
        for i, values, image_masks in zip(unit, pixels, masks, strict=True):
            records[i] = write_image_outputs(folder, images[i], values, image_masks, predictor.labels)
            if nifti_masks is not None:
                nifti_masks.add(images[i], image_masks)
    return records


class NiftiMasks:
    """The masks of the images cut from NIfTI images, put back into their images' geometry.

    Args:
        volumes: the source's NIfTI images by name (:attr:`rvseg.data.sources.Source.nifti`).
        n_labels: L, the labels per mask.
    """

    def __init__(self, volumes: dict[str, NiftiVolume], n_labels: int):
        self.volumes = volumes
        # uint8 (L, I, J, K[, T]) per volume: a slice's (L, I, J) masks go to [:, :, :, *volume_index].
        self.arrays = {name: np.zeros((n_labels, *volume.data.shape), dtype=np.uint8)
                       for name, volume in volumes.items()}

    def add(self, image: InputImage, masks: np.ndarray) -> None:
        """Place an image's bool (L, H, W) masks, if it was cut from a volume."""
        if image.volume:
            self.arrays[image.volume][(slice(None),) * 3 + image.volume_index] = masks

    def write(self, folder: Path, labels: Sequence[str]) -> list[str]:
        """Save each volume's masks in ``folder``: ``<volume>.nii.gz``, 0 / 1, for one label; for labels
        that are all ACDC's, one label map ``<volume>.nii.gz`` in ACDC's values (rv 1, myo 2, lv 3; their
        masks do not overlap: :func:`~rvseg.postprocess.postprocess_scores` with ``exclusive``); else one
        0 / 1 file ``<volume>-<label>.nii.gz`` per label.

        Returns:
            the file names.
        """
        names = []
        for name, array in self.arrays.items():
            if acdc.exclusive_labels(labels):
                values = np.zeros(array.shape[1:], dtype=np.uint8)
                for label, mask in zip(labels, array.astype(bool), strict=True):
                    values[mask] = acdc.LABEL_VALUES[label]
                names.append(f"{name}.nii.gz")
                save_like(self.volumes[name], values, folder / names[-1])
                continue
            for label, mask in zip(labels, array, strict=True):
                names.append(f"{name}.nii.gz" if len(labels) == 1 else f"{name}-{label}.nii.gz")
                save_like(self.volumes[name], mask, folder / names[-1])
        return names


def stack_instants(images: Sequence[InputImage]) -> tuple[list, list]:
    """Each image's stack at one instant, and its position along that stack, or None for both.

    - A prepared data set's images: the instant is the phase (ED or ES) the data set gives; other
      phases are not grouped (one patient's unlabelled images may be any instants).
    - Other images (a cine read from DICOM): the instant is the frame's index in its slice's cycle order
      (:func:`~rvseg.volumes.frames_by_slice`) when the stack has two or more slice positions
      (:func:`slice_position`) and the same number of frames at each: the k-th frames of a cine's
      slices are one instant, as the ES rule of :mod:`rvseg.volumes` assumes.

    Positions are :func:`slice_position`, else the slice number, in one unit per instant
    (:func:`rvseg.postprocess.stack_positions`).
    """
    instant_of: dict[str, tuple] = {}  # by image id, unique within a source (ids name the output files)
    cines: dict[str, list[InputImage]] = defaultdict(list)
    for image in images:
        if image.prepared:
            if image.phase in ("ED", "ES"):
                instant_of[image.id] = (image.stack, image.phase)
        elif slice_position(image) is not None:
            cines[image.stack].append(image)
    for stack, members in cines.items():
        slices = list(frames_by_slice(members, slice_position).values())
        if len(slices) > 1 and len({len(frames) for frames in slices}) == 1:
            for frames in slices:
                instant_of.update({image.id: (stack, rank) for rank, image in enumerate(frames)})
    instants = [instant_of.get(image.id) for image in images]
    positions = stack_positions(instants, [slice_position(image) for image in images],
                                [image.slice_number for image in images])
    instants = [instant if position is not None else None for instant, position in zip(instants, positions,
                                                                                        strict=True)]
    return instants, positions


def segmenting_units(instants: Sequence, batch_size: int) -> list[list[int]]:
    """Indices of the images segmented together, about ``batch_size`` at a time: the images of one stack
    instant always in the same unit (the ``stack`` rule needs them together), then the others."""
    groups: dict = {}
    loose = []
    for index, instant in enumerate(instants):
        if instant is None:
            loose.append([index])
        else:
            groups.setdefault(instant, []).append(index)
    units, unit = [], []
    for members in [*groups.values(), *loose]:
        unit += members
        if len(unit) >= batch_size:
            units.append(unit)
            unit = []
    return [*units, unit] if unit else units


def write_image_outputs(folder: Path, image: InputImage, pixels: np.ndarray, masks: np.ndarray,
                        labels: Sequence[str]) -> dict:
    """Write one image's mask PNG(s), overlay (on ``pixels``, :meth:`InputImage.read_pixels`) and contour
    files; returns its ``predictions.csv`` row."""
    for label, mask in zip(labels, masks, strict=True):
        name = f"{image.id}.png" if len(labels) == 1 else f"{image.id}-{label}.png"
        imsave(folder / "masks" / name, (mask * 255).astype(np.uint8), check_contrast=False)
    display = to_original_geometry(pixels[None], image.shape)[0] if image.prepared else pixels
    imsave(folder / "overlays" / f"{image.id}.png", overlay_image(display, list(masks)), check_contrast=False)
    record = {"id": image.id, "source": image.source, "stack": image.stack,
              "slice_location": image.slice_location, "position_mm": slice_position(image),
              "trigger_time": image.trigger_time, "frame": image.frame, "phase": image.phase,
              "height": image.shape[0], "width": image.shape[1],
              "spacing_mm": image.spacing_mm[0] if image.spacing_mm else None,
              "spacing_col_mm": image.spacing_mm[1] if image.spacing_mm else None}
    for label, mask in zip(labels, masks, strict=True):
        contour = mask_to_contour(mask)
        name = contour_file_name(image.id, label)
        if contour is not None:
            write_contour_file(folder / "contours" / name, contour)
        record[f"area_px_{label}"] = int(mask.sum())
        record[f"area_mm2_{label}"] = area_mm2(mask, image.spacing_mm) if image.spacing_mm else None
        record[f"contour_{label}"] = name if contour is not None else ""
    return record


def write_volumes(path: Path, images: Sequence[InputImage], records: Sequence[dict],
                  labels: Sequence[str]) -> tuple[list[dict], list[str], list[str]]:
    """Areas, phases and volumes (module docstring) to ``volumes.csv``.

    Returns:
        (one :meth:`~rvseg.volumes.StackVolumes.to_dict` per stack with a volume, notes, each image's
        phase: the one the volumes assigned (:func:`~rvseg.volumes.assign_phases`), else its record's).
    """
    given_phases = [record["phase"] for record in records]
    label = cavity_label(labels)
    if label is None:
        return [], [no_cavity_note()], given_phases
    with_spacing = [(image, record) for image, record in zip(images, records, strict=True) if image.spacing_mm]
    if not with_spacing:
        return [], ["no areas in mm^2 or volumes: the images have no pixel spacing"], given_phases
    areas = [SliceArea(stack=image.stack, id=image.id, slice_location=slice_position(image),
                       area_mm2=record[f"area_mm2_{label}"], trigger_time=image.trigger_time,
                       frame=image.frame, phase=image.phase, thickness_mm=image.thickness_mm)
             for image, record in with_spacing if slice_position(image) is not None]
    areas, rules = assign_phases(areas)
    phase_of = {(area.stack, area.id): area.phase for area in areas}
    phases = [phase_of.get((image.stack, image.id), phase) for image, phase in zip(images, given_phases, strict=True)]
    # A prepared set holds only the contoured frames: as rvseg evaluate does, an ED slice at the end of
    # the stack without an ES image counts as empty at ES (the RVSC experts leave the base out at ES).
    given = [area for area in areas if rules[area.stack] == "given"]
    filled, fill_notes = fill_missing_es(given)
    volumes = stack_volumes([*filled, *(area for area in areas if rules[area.stack] != "given")], rules)
    notes = [*fill_notes, *(f"{item.stack}: {note}" for item in volumes for note in item.notes)]
    with_volume = {item.stack for item in volumes}
    for stack, members in by_stack(areas).items():
        if stack not in with_volume:
            notes.append(f"{stack}: one slice position, so no volume")
        elif rules[stack] != "given" and all(len(frames) == 1 for frames in frames_by_slice(members).values()):
            notes.append(f"{stack}: one frame per slice and no phase given: its volume is reported as the ED volume")
    without = [image for image in images if not image.spacing_mm]
    if without:
        notes.append(f"{len(without)} image(s) have no pixel spacing (first: {without[0].source}): no area in mm^2, "
                     "and their stacks' volumes leave them out")
    if any(slice_position(image) is None for image, _ in with_spacing):
        notes.append("images without a slice location have areas but enter no volume")
    rows = [{"level": "image", "stack": image.stack, "id": image.id, "slice_location": image.slice_location,
             "position_mm": slice_position(image), "trigger_time": image.trigger_time, "frame": image.frame,
             "phase": phase, "area_mm2": record[f"area_mm2_{label}"]}
            for image, record, phase in zip(images, records, phases, strict=True) if image.spacing_mm]
    for item in volumes:
        per_phase = (("ED", item.ed_volume_ml, item.ed_slices), ("ES", item.es_volume_ml, item.es_slices))
        for phase, volume, slices in per_phase:
            if volume is not None:
                rows.append({"level": "phase", "stack": item.stack, "phase": phase, "slices": slices,
                             "slice_spacing_mm": item.slice_spacing_mm, "volume_ml": volume})
        rows.append({"level": "stack", "stack": item.stack, "slices": item.n_slices,
                     "slice_spacing_mm": item.slice_spacing_mm, "ed_volume_ml": item.ed_volume_ml,
                     "es_volume_ml": item.es_volume_ml, "stroke_volume_ml": item.stroke_volume_ml,
                     "ef_percent": item.ef_percent, "es_rule": item.es_rule})
    write_csv(path, rows, fieldnames=VOLUME_FIELDS)
    return [item.to_dict() for item in volumes], notes, phases


def orientation_notes(source: Source, predictor: Predictor) -> list[str]:
    """A warning when NIfTI images are segmented by a model trained on another layout: NIfTI slices are
    read as stored (:mod:`rvseg.data.nifti`), which for a converted DICOM series (dcm2niix) is the DICOM
    image transposed and flipped, so the model may see its anatomy turned."""
    trained_on = predictor.prepare.get("format", "")
    if not source.nifti or trained_on in ("acdc", ""):
        return []
    return [f"NIfTI slices are segmented as stored (data[:, :, z], rows along the first axis); the model was "
            f"trained on {trained_on} images, whose orientation may differ (a dcm2niix conversion stores the DICOM "
            "image transposed and flipped): check the overlays"]


#: How many times larger or smaller than in its training images a model may see the anatomy before
#: predict warns (beyond what training's scale augmentation, 0.85-1.15 by default, covers).
SCALE_WARNING_FACTOR = 1.5


def scale_notes(images: Sequence[InputImage], predictor: Predictor) -> list[str]:
    """Warnings when images show the anatomy at another size, in model pixels, than the model's training
    images did (:func:`anatomy_scale`): a model trained on half-resolution images sees a full-resolution
    heart twice as large as any it learned. Larger and smaller images are counted apart."""
    trained = predictor.trained_scale
    if not trained:
        return []
    scales = [anatomy_scale(image, predictor, trained) for image in images if not image.prepared]
    advice = ("train on images of this resolution, or prepare the training data with --size H W, which predict "
              "then applies to new images too" if predictor.input_size is None else
              "train on images of this resolution and field of view")
    notes = []
    for direction, off in (("larger", [(f, basis) for f, basis in scales if f > SCALE_WARNING_FACTOR]),
                           ("smaller", [(1 / f, basis) for f, basis in scales if f < 1 / SCALE_WARNING_FACTOR])):
        if off:
            bases = " and ".join(sorted({basis for _, basis in off}))
            notes.append(f"{len(off)} of {len(scales)} image(s) show the anatomy about "
                         f"{np.median([f for f, _ in off]):.1f}x {direction} than the model's training images did (by "
                         f"{bases}): a model segments reliably at the scale it learned; {advice}")
    return notes


def anatomy_scale(image: InputImage, predictor: Predictor, trained: dict) -> tuple[float, str]:
    """How many times larger the anatomy of ``image`` is in model pixels than in the model's training
    images, and on what basis: ``pixel spacing`` (mm per model pixel) where both give one, else ``image
    size`` (the model-input height; alike fields of view assumed: a model trained at native resolution
    sees a twice as finely sampled image's heart twice as large, one trained on images resized to a
    fixed size does not)."""
    rows = predictor.input_size[0] if predictor.input_size else image.shape[0]
    if trained.get("mm_per_pixel") and image.spacing_mm:
        return trained["mm_per_pixel"] / (image.spacing_mm[0] * image.shape[0] / rows), "pixel spacing"
    return rows / trained["rows"], "image size"


def slice_position(image: InputImage) -> float | None:
    """The slice position volumes are computed from: :attr:`InputImage.position_mm`, else the slice location.

    (Every image of a stack has a position or none has: :func:`~rvseg.data.dicom.plane_positions` for files
    read, :func:`~rvseg.data.sources.prepared_images` for a prepared set.)
    """
    return image.position_mm if image.position_mm is not None else image.slice_location

