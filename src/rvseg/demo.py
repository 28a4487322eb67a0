"""``rvseg demo``: the whole path on a synthetic phantom, on the CPU, in a few minutes.

phantom (RVSC layout, real DICOM) -> prepare -> train a small U-Net -> evaluate on the held-out
patient -> predict that patient's whole cine (masks, overlays, contours, RV volumes and EF) and
compare the volumes with the phantom's own.

The phantom is synthetic data; nothing here is a claim about real images.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rvseg.data.phantom import load_phantom_summary, write_phantom
from rvseg.data.prepare import PrepareOptions, prepare
from rvseg.errors import DataError
from rvseg.evaluate import evaluate
from rvseg.io import write_json
from rvseg.predict import predict
from rvseg.train.config import TrainConfig, load_config, user_fields
from rvseg.train.loop import train
from rvseg.volumes import volume_errors


def resumable(run: Path, config: TrainConfig) -> bool:
    """True when ``run`` holds an interrupted or finished demo run of these settings, which training
    then continues; any other earlier run there (e.g. of the other scale) is removed."""
    saved = run / "config.yaml"
    if (run / "last.pt").is_file() and saved.is_file():
        previous = load_config(saved)
        if all(getattr(previous, f.name) == getattr(config, f.name) for f in user_fields()):
            return True
    shutil.rmtree(run, ignore_errors=True)
    return False


@dataclass(frozen=True)
class DemoScale:
    patients: int
    slices: int
    frames: int
    size: tuple[int, int]
    width: int
    epochs: int
    batch_size: int


FULL = DemoScale(patients=6, slices=6, frames=10, size=(96, 80), width=8, epochs=20, batch_size=4)
QUICK = DemoScale(patients=3, slices=3, frames=4, size=(48, 40), width=4, epochs=2, batch_size=8)


def run_demo(out: str | Path, quick: bool = False) -> dict:
    """Run the demo into ``out`` (replaced if it holds an earlier demo); returns its summary."""
    scale = QUICK if quick else FULL
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("output exists and is not a folder", out)
    started = time.perf_counter()

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f}s] {text}", flush=True)

    step(f"writing a synthetic phantom (not real data): {scale.patients} patients x {scale.slices} slices x "
         f"{scale.frames} frames")
    phantom = write_phantom(out / "phantom", patients=scale.patients, slices=scale.slices, frames=scale.frames)
    step(f"preparing it at {scale.size[0]} x {scale.size[1]}")
    summary = prepare(out / "phantom", out / "dataset", PrepareOptions(size=scale.size), force=True)
    step(f"  {summary['n_samples']} annotated slices of {summary['n_patients']} patients")

    val_patient = f"P{scale.patients:02d}"
    config = TrainConfig(width=scale.width, epochs=scale.epochs, batch_size=scale.batch_size, lr=3e-3, loss="dice-bce",
                         scheduler="cosine", rotate_deg=30.0, device="cpu", val_patients=[val_patient])
    step(f"training a U-Net (width {scale.width}) for {scale.epochs} epochs on the CPU, validating on {val_patient}")
    run = out / "run"
    trained = train(out / "dataset", run, config, resume=resumable(run, config))

    step("evaluating on the validation patient")
    evaluation = evaluate(run, out / "dataset", split="val", out=out / "evaluation", force=True, device="cpu")
    endo = evaluation["labels"]["endo"]["overall"]["metrics"]
    step(f"  val endo Dice {endo['dice']['mean']:.3f}, HD {endo['hd']['mean']:.2f} mm, "
         f"HD95 {endo['hd95']['mean']:.2f} mm")

    patient_folder = out / "phantom" / f"patient{scale.patients:02d}"
    step(f"segmenting the whole cine of {patient_folder.name} ({scale.slices * scale.frames} DICOM frames)")
    predicted = predict([run], patient_folder, out / "prediction", force=True, device="cpu")
    truth = [t for t in load_phantom_summary(out / "phantom").truth if t.patient == val_patient]
    errors = volume_errors(predicted["volumes"], [{"patient": t.patient, "ed_volume_ml": t.ed_volume_ml,
                                                   "es_volume_ml": t.es_volume_ml, "ef_percent": t.ef_percent}
                                                  for t in truth])
    units = {"ed_volume_ml": "mL", "es_volume_ml": "mL", "ef_percent": "%"}
    for patient, values in errors["patients"].items():
        text = ", ".join(f"{key.split('_')[0].upper()} {v['pred']:.1f} {units[key]} (phantom {v['truth']:.1f})"
                         for key, v in values.items() if v["pred"] is not None)
        step(f"  {patient}: {text}")
    if quick:
        step("  (--quick trains a few epochs only: these volumes show the pipeline runs, not what it measures)")

    result = {
        "seconds": round(time.perf_counter() - started, 1), "phantom": str(out / "phantom"),
        "best_val_dice": trained.get("best_val_dice"), "evaluation": str(out / "evaluation"),
        "val_endo_dice": endo["dice"]["mean"], "prediction": str(out / "prediction"),
        "volume_errors": errors, "phantom_files": phantom.files_written,
    }
    write_json(out / "demo.json", result)
    step("done. Outputs:")
    for name, text in (("run", "training curves (progress.png), metrics.csv, checkpoints"),
                       ("evaluation", "summary.json, per_case.csv, examples_best/worst.png"),
                       ("prediction", "masks/, overlays/, contours/ (RVSC format), volumes.csv")):
        print(f"  {out / name}/: {text}")
    return result
