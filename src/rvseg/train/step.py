"""The training step: one forward, backward and update, run eagerly or replayed as one CUDA graph.

At RVSC's native size (about 128 x 108) a U-Net step issues several hundred small kernels and the
GPU finishes each faster than Python can launch the next: the step is *launch-bound*. Captured
once as a CUDA graph (PyTorch's "whole network capture"), a step is a single replay, and the GPU
runs back to back. ``--cuda-graph`` selects it; :func:`make_train_step` returns either kind with
one signature, so the training loop and ``rvseg bench`` call it the same way.

What the graph needs, and how it is given:

- Fixed shapes: a batch of another size (an epoch's last, partial batch) runs eagerly on the same
  model and optimizer, so every slice is still seen exactly as in an eager run.
- No host synchronisation inside the step: the optimizer keeps its step counters and learning
  rate on the device (:data:`rvseg.train.optim.GRAPH_SAFE` options), the learning rate as a
  device tensor that the scheduler's updates are copied into before each replay.
- Warm-up steps before capture (cuDNN and cuBLAS set up their workspaces): they run on a side
  stream, and the weights, BatchNorm statistics, optimizer state and CUDA random state are put
  back afterwards, so the graphed run trains from the same starting point as an eager one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rvseg.errors import ConfigError
from rvseg.train.runtime import Runtime

#: ``step(images, targets) -> loss``: images (B, C, H, W) and targets (B, L, H, W) float tensors on
#: the device; the result is the batch's detached 0-dim loss, still on the device (reading it would
#: make the host wait for the GPU). A graphed step returns the same tensor every time, overwritten by
#: its next replay: use (or clone) it before the next call.
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Eager steps before capture; PyTorch asks for at least three (lazy state, workspaces).
GRAPH_WARMUP_STEPS = 3


def optimisation_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss_fn, optimizer, scaler,
                      runtime: Runtime, channels_last: bool) -> torch.Tensor:
    """One eager forward, backward and update on a batch already on the device; returns the detached loss."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        logits = model(images)
    loss = loss_fn(as_float(logits), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def as_float(logits: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The model's output(s) in fp32 for the loss (a deeply supervised model gives a tuple)."""
    return tuple(output.float() for output in logits) if isinstance(logits, tuple) else logits.float()


def check_cuda_graph(runtime: Runtime) -> None:
    """ConfigError unless a whole training step can be captured on this runtime."""
    if runtime.device.type != "cuda":
        raise ConfigError("--cuda-graph needs a CUDA device")
    if runtime.precision == "fp16":
        raise ConfigError("--cuda-graph supports bf16 and fp32 (fp16 needs a grad scaler, which syncs the host)")
    if runtime.distributed:
        raise ConfigError("--cuda-graph runs on one process (DistributedDataParallel's gradient hooks are "
                          "not captured here)")


def make_train_step(model: nn.Module, loss_fn, optimizer: torch.optim.Optimizer, runtime: Runtime, *,
                    channels_last: bool, batch_size: int, cuda_graph: bool = False,
                    scaler: torch.amp.GradScaler | None = None, mark_cudagraph_steps: bool = False) -> Step:
    """The training step for ``model`` (on ``runtime.device``, in train mode).

    Args:
        loss_fn: ``(outputs, targets) -> scalar``; ``outputs`` is the model's logits, or for a deeply
            supervised model in training mode a tuple of them (:func:`rvseg.losses.deep_supervision_loss`).
        optimizer: over the model's parameters; for ``cuda_graph``, built with
            :func:`rvseg.train.optim.build_optimizer` (``for_cuda_graph=True``).
        channels_last: convert each batch to channels-last first.
        batch_size: the full batch size (a graph replays batches of this size only).
        cuda_graph: capture the step as one CUDA graph at the first full batch (:class:`GraphedStep`).
        scaler: the fp16 gradient scaler to step (the loop checkpoints its state); default: a new one.
        mark_cudagraph_steps: tell ``torch.compile(mode="reduce-overhead")`` where a step begins,
            so that its replayed graphs may reuse the previous step's buffers.
    """
    if scaler is None:
        scaler = runtime.grad_scaler()

    def eager(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if mark_cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        return optimisation_step(model, images, targets, loss_fn, optimizer, scaler, runtime, channels_last)

    if cuda_graph:
        check_cuda_graph(runtime)
        return GraphedStep(model, loss_fn, optimizer, runtime, channels_last, eager, batch_size)
    return eager


class GraphedStep:
    """The training step captured as one CUDA graph at its first full batch, then replayed.

    A batch of ``batch_size`` images is replayed (the first one captures the graph); a batch of
    another size runs ``eager``. Gradients live in the graph's memory and are overwritten by each replay.
    """

    def __init__(self, model: nn.Module, loss_fn, optimizer: torch.optim.Optimizer, runtime: Runtime,
                 channels_last: bool, eager: Step, batch_size: int):
        self.model, self.loss_fn, self.optimizer, self.runtime = model, loss_fn, optimizer, runtime
        self.channels_last, self.eager, self.batch_size = channels_last, eager, batch_size
        if not all(group.get("capturable") or group.get("fused") for group in optimizer.param_groups):
            raise ValueError("a graphed step needs an optimizer built with build_optimizer(..., for_cuda_graph=True)")
        self.graph: torch.cuda.CUDAGraph | None = None
        # From here on the learning rates are device tensors, for eager steps too (one optimizer path).
        self.learning_rates = device_learning_rates(optimizer, runtime.device)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if len(images) != self.batch_size:
            return self.eager(images, targets)
        if self.graph is None:
            self.capture(images, targets)
        self.sync_learning_rates()
        self.static_images.copy_(images)
        self.static_targets.copy_(targets)
        self.graph.replay()
        return self.static_loss

    def forward_backward_update(self) -> torch.Tensor:
        with self.runtime.autocast(cache=False):
            logits = self.model(self.static_images)
        loss = self.loss_fn(as_float(logits), self.static_targets)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def capture(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.cuda.device(self.runtime.device):  # the graph, its pool and its streams on the run's GPU
            self._capture(images, targets)

    def _capture(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.static_images = images.clone(memory_format=memory_format)
        self.static_targets = targets.clone()
        saved = snapshot_training_state(self.model, self.optimizer)
        side = torch.cuda.Stream(self.runtime.device)
        side.wait_stream(torch.cuda.current_stream(self.runtime.device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self.forward_backward_update()
        torch.cuda.current_stream(self.runtime.device).wait_stream(side)
        restore_training_state(self.model, self.optimizer, saved)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self.forward_backward_update()
        # The replay writes these gradients; an eager step (set_to_none) would drop the parameters' .grad,
        # the only other references to them.
        self.static_grads = [p.grad for p in self.model.parameters()]

    def sync_learning_rates(self) -> None:
        """Copy a scheduler's new learning rates into the tensors the graph reads."""
        for group, captured in zip(self.optimizer.param_groups, self.learning_rates, strict=True):
            if group["lr"] is not captured:  # a scheduler that assigns instead of filling in place
                captured.fill_(float(group["lr"]))
                group["lr"] = captured


def device_learning_rates(optimizer: torch.optim.Optimizer, device: torch.device) -> list[torch.Tensor]:
    """Make each param group's learning rate a 0-dim float32 tensor on ``device`` (the schedulers then
    fill it in place) and return those tensors."""
    rates = []
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == device and lr.dim() == 0):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        rates.append(group["lr"])
    return rates


def snapshot_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Copies of the weights, buffers, optimizer state tensors and CUDA random state."""
    state = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
             "optimizer": {p: {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
                           for p, s in optimizer.state.items()}}
    device = next(model.parameters()).device
    if device.type == "cuda":
        state["cuda_rng"] = (device, torch.cuda.get_rng_state(device))
    return state


@torch.no_grad()
def restore_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Put back what :func:`snapshot_training_state` saved, in place (the tensors keep their memory,
    which a graph captured afterwards reads and writes).

    Optimizer state created since the snapshot is zeroed: for Adam, AdamW and SGD a zero step count,
    zero moments and a zero momentum buffer update exactly as a fresh optimizer does.
    """
    model.load_state_dict(saved["model"])
    for param, state in optimizer.state.items():
        before = saved["optimizer"].get(param, {})
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            if key in before:
                value.copy_(before[key])
            else:
                value.zero_()
    if "cuda_rng" in saved:
        device, rng_state = saved["cuda_rng"]
        torch.cuda.set_rng_state(rng_state, device)
