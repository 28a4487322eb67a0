"""Segmenting images with one or more trained checkpoints, exactly as their data were prepared.

A :class:`Predictor` holds the models of one or more checkpoints and the preparation options their
data set was made with (``prepare`` in the checkpoint's data info). For one raw image (H, W):

1. **Preprocess** as ``rvseg prepare`` did: :func:`~rvseg.data.prepare.normalise_image` (percentile /
   z-score / none, CLAHE) at native resolution, then, when the models were trained on resized
   images, :func:`~rvseg.data.prepare.resize_sample` to their size, then the grey image repeated to
   the models' channel count. The result is the model input, float32 (C, h, w).
2. **Probabilities**: the sigmoid of each model's logits, (L, h, w), one channel per label. With
   ``tta`` each model also sees the image flipped left-right, up-down and both; each output is
   flipped back and the four are averaged. Flips form a group, so the averaged output is exactly
   flip-equivariant: segmenting a flipped image gives the flipped segmentation.
3. **Scores**: each model's probabilities are first turned into a *filled score*, a map in [0, 1]
   whose foreground is ``score > 0.5`` (:func:`~rvseg.data.targets.filled_scores`: the probability itself for filled
   targets, ``2 p - 1`` for the grey targets whose decision threshold is 0.75, and the hole-filled
   outline for outline targets). The ensemble then combines them:

   - ``mean`` (the paper's average-probability ensemble): the mean of the models' probabilities,
     turned into a filled score.
   - ``vote`` (majority vote): the share of models whose own mask (step 4) covers the pixel; a
     pixel is foreground with a strict majority, so a tie between two models is background.

   One checkpoint given twice gives exactly what it gives once, with either rule, and a vote of
   one model is that model's own mask.
4. **Original geometry**: a score map is resized bilinearly back to (H, W) (half-pixel centres,
   the grid convention of the resize in step 1, so the two are inverse maps) and thresholded at 0.5
   there: the mean's score map, or each model's own for a vote. Masks are therefore at the
   resolution of the original image, not the model's.
5. **Post-processing** (:mod:`rvseg.postprocess`): each label keeps one 8-connected region with its
   holes filled, the region a single closed contour describes (RVSC contours are one closed polygon
   per structure), so predicted masks, written contours and areas agree with each other.
   :meth:`Predictor.predict` keeps each image's largest region unless it is told the images' stacks;
   ``rvseg predict`` and ``rvseg evaluate`` by default choose the region through the slices of each
   stack (``stack``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rvseg.checks import as_paths, check_choice, finite_or_none, is_whole_number
from rvseg.data import acdc
from rvseg.data.prepare import normalise_image, resize_sample
from rvseg.data.targets import filled_scores
from rvseg.errors import ConfigError, DataError
from rvseg.postprocess import check_rule, postprocess_scores
from rvseg.train.checkpoint import find_checkpoints, model_from_checkpoint
from rvseg.train.runtime import resolve_device

ENSEMBLES = ("mean", "vote")
#: Preparation options that change what a model sees; checkpoints of an ensemble must agree on them.
PREPROCESSING_KEYS = ("size", "channels", "normalize", "clahe")
#: The flips of test-time augmentation, as tensor dimensions of (B, C, H, W) to flip.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


@dataclass
class Predictor:
    """Models of one or more checkpoints, with how their inputs must be prepared.

    Attributes:
        models: networks mapping float (B, C, h, w) to logits (B, L, h, w), in eval mode.
        labels: the L label names, in output-channel order (e.g. ``["endo"]``).
        prepare: the preparation options of the models' data set (``size``, ``channels``,
            ``normalize``, ``clahe``, ...), as saved by ``rvseg prepare``.
        mask_style: the training target encoding: ``filled``, ``grey`` or ``outline``.
        ensemble: ``mean`` or ``vote`` (module docstring).
        tta: average over the four flips.
        batch_size: images per forward pass.
        device: where the models run.
        checkpoints: the checkpoint files (for the record).
        data_infos: each checkpoint's data info (``train_patients``, ``val_patients``, ``content_hash``, ...).
    """

    models: list[nn.Module]
    labels: list[str]
    prepare: dict
    mask_style: str = "filled"
    ensemble: str = "mean"
    tta: bool = False
    batch_size: int = 16
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoints: list[Path] = field(default_factory=list)
    data_infos: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice(self.ensemble, ENSEMBLES, "--ensemble")
        if not is_whole_number(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, not {self.batch_size!r}")
        if not self.models:
            raise ConfigError("at least one model (checkpoint) is needed")
        self.models = [model.to(self.device).eval() for model in self.models]

    @classmethod
    def from_checkpoints(cls, paths: str | Path | Sequence[str | Path], *, ensemble: str = "mean",
                         tta: bool = False, batch_size: int = 16, device: str = "auto") -> Predictor:
        """Load a checkpoint file or run folder (``best.pt``, else ``last.pt``), or several (an ensemble);
        a cross-validation folder of ``rvseg train --folds N`` stands for its folds' runs.

        Raises:
            DataError: a checkpoint cannot be loaded or does not record its data preparation, or a
                cross-validation folder whose folds are not all trained to their end.
            ConfigError: the checkpoints disagree on labels, target style or preprocessing.
        """
        files = [file for path in as_paths(paths, "checkpoints") for file in find_checkpoints(path)]
        models, infos = [], []
        for file in files:
            model, _, data = model_from_checkpoint(file)
            if "prepare" not in data or "labels" not in data:
                raise DataError("checkpoint does not record its labels and data preparation; retrain it with "
                                "this version of rvseg", file)
            models.append(model)
            infos.append(data)
        check_same_preprocessing(files, infos)
        first = infos[0]
        return cls(models=models, labels=list(first["labels"]), prepare=dict(first["prepare"]),
                   mask_style=first.get("mask_style", "filled"), ensemble=ensemble, tta=tta,
                   batch_size=batch_size, device=resolve_device(device), checkpoints=files, data_infos=infos)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(h, w) every input is resized to, or None when the models saw native resolution."""
        size = self.prepare.get("size")
        return (int(size[0]), int(size[1])) if size else None

    @property
    def trained_scale(self) -> dict | None:
        """How large the anatomy was in the first model's training images
        (:meth:`~rvseg.data.dataset.PreparedDataset.scale`), or None for a checkpoint that predates it."""
        return self.data_infos[0].get("scale") if self.data_infos else None

    @property
    def in_channels(self) -> int:
        return int(self.prepare.get("channels", 1))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Model input of one raw float (H, W) image: float32 (C, h, w) (module docstring, step 1)."""
        method = self.prepare.get("normalize", "percentile")
        normalised = normalise_image(image, method, bool(self.prepare.get("clahe")))
        return self.to_model_input(normalised)

    def to_model_input(self, normalised: np.ndarray) -> np.ndarray:
        """Resize a normalised float (H, W) image as the models' data were, and repeat it to C channels."""
        size = self.input_size
        if size is not None and tuple(normalised.shape) != size:
            # resize_sample is the resize the data set was prepared with; it always takes masks too.
            normalised, _ = resize_sample(normalised, np.zeros((1, *normalised.shape), dtype=np.uint8), size)
        return np.repeat(normalised[None].astype(np.float32), self.in_channels, axis=0)

    @torch.no_grad()
    def model_probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Sigmoid probabilities of every model (TTA-averaged when ``tta``).

        Args:
            inputs: float32 (N, C, h, w) model inputs.

        Returns:
            float32 (M, N, L, h, w), one entry per model.
        """
        flips = TTA_FLIPS if self.tta else ((),)
        outputs = []
        for model in self.models:
            per_model = []
            for start in range(0, len(inputs), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(inputs[start:start + self.batch_size])).to(self.device)
                total = torch.zeros((), device=self.device)
                for dims in flips:
                    flipped = torch.flip(batch, dims) if dims else batch
                    probabilities = torch.sigmoid(model(flipped).float())
                    total = total + (torch.flip(probabilities, dims) if dims else probabilities)
                per_model.append((total / len(flips)).cpu().numpy())
            outputs.append(np.concatenate(per_model))
        return np.stack(outputs)

    def score_maps(self, inputs: Sequence[np.ndarray],
                   shapes: Sequence[tuple[int, int] | None]) -> Iterator[np.ndarray]:
        """Scores of many model inputs, each resized to its output shape.

        Args:
            inputs: float32 (C, h_i, w_i) model inputs; equal shapes are batched together.
            shapes: for each input the (H, W) to map its scores to, or None to keep (h_i, w_i).

        Yields:
            float32 (L, H_i, W_i) combined scores (foreground: > 0.5), in input order.
        """
        for start in range(0, len(inputs), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(inputs)))
            by_shape: dict[tuple, list[int]] = {}
            for i in chunk:
                by_shape.setdefault(inputs[i].shape, []).append(i)
            maps: dict[int, np.ndarray] = {}
            for members in by_shape.values():
                probabilities = self.model_probabilities(np.stack([inputs[i] for i in members]))
                for j, i in enumerate(members):
                    maps[i] = combine(probabilities[:, j], self.ensemble, self.mask_style, shapes[i])
            yield from (maps[i] for i in chunk)

    def predict(self, images: Sequence[np.ndarray], postprocess: bool | str = True, *,
                stacks: Sequence[Hashable | None] | None = None,
                positions: Sequence[float | None] | None = None) -> list[np.ndarray]:
        """Masks of raw images at their own resolution.

        Args:
            images: raw float (H_i, W_i) images (intensities as read, not normalised): a list, or one
                (N, H, W) array.
            postprocess: a rule of :mod:`rvseg.postprocess` (``largest``, ``none``, ``stack``), or True
                (``largest``: each label's largest region, holes filled; module docstring, step 5) or False
                (``none``). ``stack`` chooses each label's region through the images of one stack, which
                ``stacks`` names; an image without a stack gets ``largest``.
            stacks: for ``stack``, each image's stack at one instant (e.g. ``("P17", "ED")``), or None
                where it has none: images with the same key are one instant's slices.
            positions: each image's position along its stack (mm or slice number); by default the order
                in which a stack's images are given (base to apex, or apex to base).

        Returns:
            bool (L, H_i, W_i) masks, one per image, channels in the order of ``labels``.

        Raises:
            ConfigError: an image that is not 2D, an unknown rule, ``stacks``/``positions`` that are no
                list of one value per image, a stack key that is not hashable, or a position that is not a
                finite number (or None).
        """
        if isinstance(images, np.ndarray) and images.ndim == 2:
            raise ConfigError(f"images must be a list of (H, W) images (or one (N, H, W) array), not one image "
                              f"of shape {images.shape}: pass [image]")
        rule = ("largest" if postprocess else "none") if isinstance(postprocess, (bool, np.bool_)) else postprocess
        check_rule(rule)
        images = [np.asarray(image) for image in images]
        for k, image in enumerate(images):
            if image.ndim != 2 or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
                raise ConfigError(f"images[{k}] must be a 2-D (H, W) array of intensities, not "
                                  f"{image.dtype} of shape {image.shape}")
        stacks = per_image(stacks, "stacks", len(images), stack_key)
        positions = per_image(positions, "positions", len(images), position_value)
        if stacks is not None and positions is None:
            positions = list(range(len(images)))  # within a stack, the order the images came in
        inputs = [self.preprocess(image) for image in images]
        return postprocess_scores(list(self.score_maps(inputs, [image.shape for image in images])), rule,
                                  stacks=stacks, positions=positions, exclusive=acdc.exclusive_labels(self.labels))


def per_image(values: object, name: str, n_images: int, check: Callable[[object, str], object]) -> list | None:
    """``values`` (any iterable but text or a mapping) as a list of one checked value per image, or None."""
    if values is None:
        return None
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a list with one value per image, not {type(values).__name__} "
                          f"{values!r:.80}")
    values = list(values)
    if len(values) != n_images:
        raise ConfigError(f"{name} must give one value per image: {len(values)} for {n_images} images")
    return [check(value, f"{name}[{k}]") for k, value in enumerate(values)]


def stack_key(value: object, name: str) -> Hashable | None:
    try:
        hash(value)
    except TypeError:
        raise ConfigError(f"{name} must be a hashable key such as a tuple or text, not {type(value).__name__} "
                          f"{value!r:.80}") from None
    return value


def position_value(value: object, name: str) -> float | None:
    position = finite_or_none(value)
    if value is not None and (position is None or isinstance(value, (str, bytes, bool, np.bool_))):
        raise ConfigError(f"{name} must be a finite number or None, not {type(value).__name__} {value!r:.80}")
    return position


def check_same_preprocessing(files: Sequence[Path], infos: Sequence[dict]) -> None:
    """Raise ConfigError when checkpoints disagree on labels, target style or input preparation."""
    first = infos[0]
    for file, info in zip(files[1:], infos[1:], strict=True):
        pairs = [("labels", list(first["labels"]), list(info["labels"])),
                 ("mask style", first.get("mask_style", "filled"), info.get("mask_style", "filled"))]
        pairs += [(f"prepare option '{key}'", _option(first["prepare"], key), _option(info["prepare"], key))
                  for key in PREPROCESSING_KEYS]
        for what, expected, found in pairs:
            if expected != found:
                raise ConfigError(f"checkpoints cannot be combined: {files[0]} has {what} {expected!r} but "
                                  f"{file} has {found!r}")


def combine(probabilities: np.ndarray, ensemble: str, mask_style: str,
            shape: tuple[int, int] | None = None) -> np.ndarray:
    """Combine per-model probabilities into filled scores at the output geometry (module docstring, 3-4).

    Args:
        probabilities: float (M, ..., h, w), one entry per model (e.g. (M, L, h, w)).
        ensemble: ``mean`` or ``vote``.
        mask_style: the models' target encoding.
        shape: the (H, W) to map to, or None to stay at (h, w).

    Returns:
        float32 (..., H, W) in [0, 1]; foreground is ``> 0.5``.
    """
    check_choice(ensemble, ENSEMBLES, "--ensemble")
    shape = shape or probabilities.shape[-2:]
    if ensemble == "mean":
        return to_original_geometry(filled_scores(probabilities.mean(axis=0), mask_style), shape)
    votes = np.stack([to_original_geometry(filled_scores(p, mask_style), shape) > 0.5 for p in probabilities])
    return votes.mean(axis=0, dtype=np.float32)


def to_original_geometry(scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize float (..., h, w) maps bilinearly to (..., H, W) (half-pixel centres, as the input resize)."""
    if tuple(scores.shape[-2:]) == tuple(shape):
        return scores
    size = tuple(int(s) for s in shape)
    tensor = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)).reshape(1, -1, *scores.shape[-2:])
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return resized.reshape(*scores.shape[:-2], *size).numpy()


def _option(prepare: dict, key: str):
    value = prepare.get(key)
    return list(value) if isinstance(value, (list, tuple)) else value


def check_prepared_compatible(predictor: Predictor, dataset) -> None:
    """Raise ConfigError when a prepared data set's intensities were normalised unlike the models' data.

    The image size and channel count may differ: inputs are taken from the first channel of each
    sample's real extent and resized / repeated as the models' data were (a set prepared at another
    fixed size is thereby resampled twice, a small approximation).
    """
    options = dataset.meta.get("options", {})
    for key in ("normalize", "clahe"):
        if _option(options, key) != _option(predictor.prepare, key):
            raise ConfigError(f"the data set was prepared with {key}={_option(options, key)!r} but the model's data "
                              f"with {key}={_option(predictor.prepare, key)!r}; prepare it again with the model's "
                              "options", dataset.root)


def prepared_inputs(predictor: Predictor, dataset, indices: Sequence[int]) -> list[np.ndarray]:
    """Model inputs, float32 (C, h, w), of samples of a :class:`~rvseg.data.dataset.PreparedDataset`.

    Each sample's real extent (``height`` x ``width``, without the stacking padding) is taken from
    its first channel, resized to the models' size if they have one, and repeated to C channels.
    """
    check_prepared_compatible(predictor, dataset)
    inputs = []
    for index in indices:
        height, width = dataset.extent(index)
        inputs.append(predictor.to_model_input(dataset.images[index, 0, :height, :width]))
    return inputs
