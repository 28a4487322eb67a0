"""Builders of small test inputs, shared by several test files."""

from __future__ import annotations

import shutil
from pathlib import Path


def make_patient_copy(tmp_path: Path, rvsc_root: Path, frames=("0020", "0021", "0022", "0023")) -> Path:
    """A copy of patient09 with only ``frames`` of the DICOMs, all 6 contours and the list file.

    Returns the folder holding ``patient09/`` (the data root).
    """
    source = rvsc_root / "patient09"
    patient = tmp_path / "data" / "patient09"
    (patient / "P09dicom").mkdir(parents=True)
    for frame in frames:
        shutil.copy(source / "P09dicom" / f"P09-{frame}.dcm", patient / "P09dicom")
    shutil.copytree(source / "P09contours-manual", patient / "P09contours-manual")
    shutil.copy(source / "P09list.txt", patient)
    return patient.parent


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


def crop_dicom(path: Path, rows: int, cols: int) -> None:
    """Rewrite a DICOM file in place with only its top-left ``rows`` x ``cols`` pixels."""
    import numpy as np
    import pydicom

    dataset = pydicom.dcmread(path)
    cropped = np.ascontiguousarray(dataset.pixel_array[:rows, :cols])
    dataset.Rows, dataset.Columns = cropped.shape
    dataset.PixelData = cropped.tobytes()
    dataset.save_as(path)


def compress_dicom(path: Path, syntax: str) -> None:
    """Rewrite the DICOM file ``path`` in place in a compressed transfer syntax, as a PACS exports it:
    ``"jpeg-lossless"`` (process 14, selection value 1), ``"jpeg-ls"`` or ``"jpeg-2000"`` (lossless)."""
    import gdcm

    syntaxes = {"jpeg-lossless": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
                "jpeg-ls": gdcm.TransferSyntax.JPEGLSLossless,
                "jpeg-2000": gdcm.TransferSyntax.JPEG2000Lossless}
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntaxes[syntax]))
    change.SetInput(reader.GetImage())
    assert change.Change(), path
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path
