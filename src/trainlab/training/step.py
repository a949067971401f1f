"""The training step: forward, loss, backward, (clip,) update on one batch (or on the gradients of an accumulation
window), then the hooks that follow every update (the schedule, weight averaging).

make_train_step chooses, once, between the plain step and the same step recorded as a CUDA graph."""
import itertools
import logging
from typing import Callable, Optional, Sequence

import torch

from trainlab.training.evaluator import correct
from trainlab.training.numerics import Numerics

log = logging.getLogger("trainlab")

WARM_UP_STEPS = 3  # eager steps before a CUDA graph is recorded


class TrainStep:
    """One batch of training: forward, loss, backward, then (at the end of its accumulation window) the update ->
    (loss, number correct), both left on the device, so the loop reads them back only when it logs; after each
    update, each of `hooks` (no arguments), in order.

    Under accumulation (`share` < 1) a batch's loss is weighed by its share of the window and its gradients are added
    to the window's; `update=False` leaves them for the next batch. Before the update: with `clip_grad_norm`, the
    gradients' total norm is clipped to it; with skip_nonfinite, an update whose loss or gradients are not finite is
    not applied and gives (None, None) (that check reads back every step, so only when asked). The hooks follow every
    update, applied or not. In fp16 the gradient scaler scales the loss and skips an update whose gradients
    overflowed (lowering its scale). `parts`: the step's checkpointed parts."""

    def __init__(self, model, loss_fn, optimizer, numerics: Numerics, skip_nonfinite: bool = False,
                 clip_grad_norm: Optional[float] = None, hooks: Sequence[Callable] = (), accumulate: int = 1):
        self.model, self.loss_fn, self.optimizer, self.numerics = model, loss_fn, optimizer, numerics
        self.skip_nonfinite, self.clip_grad_norm, self.hooks = skip_nonfinite, clip_grad_norm, list(hooks)
        self.device = numerics.device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.scaler = numerics.grad_scaler()
        self.pending = False  # gradients of a window's earlier batches wait in .grad
        # what the checkpoint holds of the step: the optimizer's state, fp16's scaler, a window's gradients so far
        self.parts = {"optimizer": OptimizerPart(optimizer), **({"scaler": self.scaler} if self.scaler else {}),
                      **({"accumulated": AccumulatedGradients(self)} if accumulate > 1 else {})}

    def __call__(self, images, targets, share: float = 1.0, update: bool = True):
        if not self.pending:
            self.optimizer.zero_grad(set_to_none=True)
        result = self.update(self.numerics.layout(images), targets, share, update)
        self.pending = not update
        if update:
            self.after_step()
        return result

    def update(self, images, targets, share: float = 1.0, apply: bool = True):
        """Forward, loss, backward, clip, update: what a CUDA graph records (a whole batch, applied)."""
        loss, logits = self.gradients(self.model, images, targets, share)
        if not apply:
            return self._held(loss, logits, targets)
        if self.scaler is not None:
            return self._scaled_update(loss, logits, targets)
        if self.skip_nonfinite and not _all_finite(loss, self.params):
            self.optimizer.zero_grad(set_to_none=True)
            return None, None
        self.apply()
        return loss.detach(), correct(logits.detach(), targets)

    def gradients(self, model, images, targets, share: float = 1.0):
        """Forward through `model` (the step's, or the plain module inside a data-parallel one), the loss, and its
        gradients (weighed by `share`; scaled in fp16) added to .grad -> (loss, logits)."""
        with self.numerics.autocast():
            logits = model(images)
            loss = self.loss_fn(logits, targets)
        weighed = loss * share if share != 1 else loss
        (self.scaler.scale(weighed) if self.scaler is not None else weighed).backward()
        return loss, logits

    def apply(self) -> None:
        """The update from the gradients in .grad: clipped first, with clip_grad_norm."""
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        self.optimizer.step()

    def _held(self, loss, logits, targets):
        """A window's batch before its last: its gradients wait; with skip_nonfinite, a non-finite loss is counted
        skipped here (its gradients then make the window's update be skipped)."""
        if self.skip_nonfinite and not bool(torch.isfinite(loss).item()):
            return None, None
        return loss.detach(), correct(logits.detach(), targets)

    def _scaled_update(self, loss, logits, targets):
        """fp16: the gradients (of the scaled loss) unscaled before clipping; the scaler's step skips the update where
        they overflowed (and its update lowers the scale), which counts as a skipped step."""
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.get_scale() < scale:  # lowered: this step's gradients overflowed and it was not applied
            return None, None
        return loss.detach(), correct(logits.detach(), targets)

    def after_step(self) -> None:
        for hook in self.hooks:
            hook()


class AccumulatedGradients:
    """A checkpointed part: the gradients an accumulation window has gathered so far (none at a window's end), so a
    run stopped mid-window resumes with them and makes the update an uninterrupted run makes."""

    def __init__(self, step: TrainStep):
        self.step = step

    def state_dict(self) -> dict:
        grads = [p.grad.detach().clone() if p.grad is not None else None for p in self.step.params]
        return {"grads": grads if self.step.pending else None}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.step.pending = state["grads"] is not None
        for param, grad in zip(self.step.params, state["grads"] or []):
            param.grad = None if grad is None else grad.to(param.device).clone()


class CudaGraphStep:
    """A TrainStep whose update is recorded once as a CUDA graph for a full batch and replayed: one launch per step
    instead of dozens, which is what bounds small batches on a fast GPU. The hooks run after each replay.

    Its rules:
    - the first WARM_UP_STEPS steps run eagerly on a side stream (cuDNN and cuBLAS choose and allocate kernels);
    - the graph reads its inputs from static_images / static_targets, made here for a full batch of `batch_shape`;
      a smaller batch (an epoch's last) runs eagerly;
    - the learning rate: an optimizer that can read it from the device (Adam's `capturable`) gets each group's rate
      as a tensor, which the schedule sets in place and the graph reads, so any schedule is replayed; for another
      the rate is a constant inside the graph, recorded again whenever it has changed (make_train_step keeps those
      eager under a per-step schedule), and whenever the set of parameters that train has changed;
    - the (loss, correct) it returns are the graph's output tensors, overwritten by the next replay: read them first;
    - in a data-parallel run (`processes` > 1) each process records two graphs: its own batch's gradients (through
      the plain module: DistributedDataParallel's hooks run in Python, which a replay skips), then the update; between
      them one all-reduce a dtype sums the gradients over the processes (SummedGradients), outside the graphs, so any
      backend serves, gloo included. Unlike DDP's buckets it waits for the whole backward: no overlap.
    """

    def __init__(self, step: TrainStep, batch_shape: tuple, processes: int = 1):
        self.step, self.model, self.device, self.parts = step, step.model, step.device, step.parts
        self.static_images = step.numerics.layout(torch.zeros(batch_shape, device=self.device))
        self.static_targets = torch.zeros(batch_shape[0], dtype=torch.long, device=self.device)
        self.static_out = None  # the graph's (loss, correct): made when it is recorded
        self.graph, self.graph_lr, self.graph_trains, self.eager_steps = None, None, None, 0
        self.rates_on_device = rates_on_device(step.optimizer, self.device)
        self.processes, self.summed, self.update_graph = processes, None, None  # data-parallel: the second graph
        self.local = getattr(step.model, "module", step.model) if processes > 1 else step.model  # DDP's inner module

    def __call__(self, images, targets, share: float = 1.0, update: bool = True):  # no accumulation under a graph
        if self.eager_steps < WARM_UP_STEPS:
            result = self._warm_up(self.step.numerics.layout(images), targets)
        elif images.shape != self.static_images.shape:
            return self.step(images, targets)
        else:
            if targets.shape != self.static_targets.shape or targets.dtype != self.static_targets.dtype:
                self.static_targets, self.graph = torch.zeros_like(targets), None  # soft targets (mixup): recorded anew
            lr = None if self.rates_on_device else self.step.optimizer.param_groups[0]["lr"]
            trains = tuple(p.requires_grad for p in self.step.params)  # a whitening bias stops training mid-run
            if self.graph is None or lr != self.graph_lr or trains != self.graph_trains:
                self._record(lr, trains)
            self.static_images.copy_(images)
            self.static_targets.copy_(targets)
            self.graph.replay()
            if self.update_graph is not None:
                self.summed.sum()
                self.update_graph.replay()
            result = self.static_out
        self.step.after_step()
        return result

    def _warm_up(self, images, targets):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.step.optimizer.zero_grad(set_to_none=True)
            result = self.step.update(images, targets)
        torch.cuda.current_stream().wait_stream(stream)
        self.eager_steps += 1
        return result

    def _record(self, lr, trains):
        self.graph, self.graph_lr, self.graph_trains = torch.cuda.CUDAGraph(), lr, trains
        self.step.optimizer.zero_grad(set_to_none=True)
        if self.processes == 1:
            with torch.cuda.graph(self.graph):
                self.static_out = self.step.update(self.static_images, self.static_targets)
            return
        with torch.cuda.graph(self.graph):
            loss, logits = self.step.gradients(self.local, self.static_images, self.static_targets)
            self.static_out = loss.detach(), correct(logits.detach(), self.static_targets)
            self.summed = SummedGradients(self.step.params, self.processes)
        self.update_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.update_graph, pool=self.graph.pool()):  # reads the first graph's tensors
            self.summed.unpack()
            self.step.apply()


class SummedGradients:
    """A data-parallel step's gradients as DistributedDataParallel leaves them, the mean over the processes, without
    its hooks: made after a backward, it packs each process's gradients into one flat buffer a dtype; sum() adds the
    buffers over the processes (one all-reduce each); unpack() writes the mean back into .grad. It holds the gradient
    tensors it was made from, which a recorded graph keeps writing."""

    def __init__(self, params, processes: int):
        grads = [p.grad for p in params if p.grad is not None]
        self.processes, self.buffers, self.pairs = processes, [], []  # pairs: (a gradient, its part of a buffer)
        for dtype in dict.fromkeys(g.dtype for g in grads):
            same = [g for g in grads if g.dtype == dtype]
            flat = torch.empty(sum(g.numel() for g in same), dtype=dtype, device=same[0].device)
            offsets = [0, *itertools.accumulate(g.numel() for g in same)]
            self.pairs += [(g, flat[start:end].view(g.shape)) for g, start, end in zip(same, offsets, offsets[1:])]
            self.buffers.append(flat)
        for grad, part in self.pairs:
            part.copy_(grad)

    def sum(self) -> None:
        for flat in self.buffers:
            torch.distributed.all_reduce(flat)

    def unpack(self) -> None:
        for flat in self.buffers:
            flat.div_(self.processes)
        for grad, part in self.pairs:
            grad.copy_(part)


def rates_on_device(optimizer, device) -> bool:
    """Give each group a learning rate the optimizer reads from the device, where it can (Adam's family, with
    `capturable`); -> whether it could. Its step counter moves to the device too, so a graph can advance it."""
    groups = optimizer.param_groups
    if not all("capturable" in group for group in groups):
        return False
    for group in groups:
        group["capturable"] = True
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
    return True


class OptimizerPart:
    """The optimizer as a checkpointed part: learning rates saved as numbers (a CUDA-graph step may hold them as
    tensors on the device) and loaded back into those tensors, which a recorded graph keeps reading."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        state = self.optimizer.state_dict()
        for group in state["param_groups"]:
            group["lr"] = float(group["lr"])
        return state

    def load_state_dict(self, state: dict) -> None:
        tensors = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, tensor in zip(self.optimizer.param_groups, tensors):
            if isinstance(tensor, torch.Tensor):
                tensor.fill_(float(group["lr"]))
                group["lr"] = tensor


def make_train_step(model, loss_fn, optimizer, numerics: Numerics, *, cuda_graphs: bool, batch_shape: tuple,
                    skip_nonfinite: bool = False, clip_grad_norm: Optional[float] = None, hooks=(),
                    per_step_rates: bool = False, processes: int = 1, accumulate: int = 1):
    """The run's step: a CUDA graph where it can hold the whole step (trainer.cuda_graphs on a GPU), else eager, and
    a line saying why where one was asked for and cannot be used. `processes`: a data-parallel run's (the graphs of
    each process then sum the gradients between them)."""
    step = TrainStep(model, loss_fn, optimizer, numerics, skip_nonfinite, clip_grad_norm, hooks, accumulate)
    if not (cuda_graphs and numerics.device.type == "cuda"):
        return step
    why = graphs_off(step, accumulate, per_step_rates)
    if why:
        log.info(f"CUDA graphs off: {why}; steps run eagerly")
        return step
    return CudaGraphStep(step, batch_shape, processes)


def graphs_off(step: TrainStep, accumulate: int, per_step_rates: bool) -> Optional[str]:
    """Why a CUDA graph cannot hold this step (None: it can). A graph replays a whole update, the same each time."""
    if step.skip_nonfinite:
        return "trainer.nonfinite=skip reads every step's loss back to decide"
    if step.scaler is not None:
        return "precision=fp16's gradient scaler decides each step whether to apply it"
    if accumulate > 1:
        return f"trainer.accumulate_grad_batches={accumulate} makes an update of several batches"
    if per_step_rates and not all("capturable" in group for group in step.optimizer.param_groups):
        # the rate is a number inside the graph: recorded again every step, slower than none
        return "a per-step schedule sets the rate of an optimizer that cannot read it from the GPU"
    return None


def _all_finite(loss, params) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return bool(torch.isfinite(loss).item()) and all(bool(torch.isfinite(g).all().item()) for g in grads)
