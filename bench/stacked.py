"""Several seeds of one network and loss trained as one: ``torch.func`` stacking and ``vmap``.

A tiny network leaves a large GPU idle; separate processes share it badly (1.33x the throughput
of one run at 4 runs on an H200, issue #20). :class:`StackedNets` holds N copies of one
(network, loss plugin) pair, each with its own weights, buffers (BatchNorm statistics) and data,
as stacked tensors (``torch.func.stack_module_state``); one ``vmap`` of ``functional_call`` runs
all N forward passes, one backward gives each copy the gradient of its own loss, and any
elementwise optimiser (SGD with momentum, Nesterov and weight decay; AdamW) over the stacked
tensors takes exactly the N separate steps: the copies never mix.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from podbench.losses import create_loss
    >>> models = [nn.Linear(4, 3) for _ in range(2)]  # two seeds' networks
    >>> plugins = [create_loss("softmax", num_classes=2, feat_dim=3) for _ in range(2)]
    >>> stacked = StackedNets(models, plugins)
    >>> opt = torch.optim.SGD(stacked.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    >>> losses = stacked.losses(torch.randn(2, 8, 4), torch.randint(0, 2, (2, 8)))
    >>> losses.shape  # one loss per copy, each on its own batch
    torch.Size([2])
    >>> opt.zero_grad(); losses.sum().backward(); opt.step()
    >>> stacked.write_back()  # the two modules hold their own new weights

Divergence stays per copy: a NaN in one copy's loss reaches only that copy's slices
(:meth:`finite` says which copies are still finite, on the device, with no host sync).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from podbench.errors import UserError

if TYPE_CHECKING:
    from podbench.loop import Trainer
    from podbench.losses import LossPlugin
    from podbench.runs import RunSpec

__all__ = ["StackedNets", "train_stacked"]


class _Pair(nn.Module):
    """A network and its loss plugin as one module: ``forward(x, y)`` is the training loss."""

    def __init__(self, model: nn.Module, plugin: LossPlugin) -> None:
        super().__init__()
        self.model = model
        self.plugin: LossPlugin = plugin

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.plugin(self.model(x), y).total

    def loss_and_correct(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model(x)
        total = self.plugin(features, y).total
        with torch.no_grad():
            correct = (self.plugin.predict(features.detach()).argmax(dim=1) == y).sum()
        return total, correct

    def scores(self, x: Tensor) -> Tensor:
        return self.plugin.predict(self.model(x))


class StackedNets:
    """N (network, loss plugin) copies of one architecture, trained with one vmapped step.

    Args:
        models: the N networks (the same architecture, their own initial weights).
        plugins: the N loss plugins (the same loss and settings; their heads their own).
    """

    def __init__(self, models: Sequence[nn.Module], plugins: Sequence[LossPlugin]) -> None:
        if len(models) != len(plugins) or not models:
            raise ValueError("give one loss plugin per network, at least one of each")
        for plugin in plugins:  # value checks read the device, which a vmapped call cannot
            plugin.check_values = False
        self.pairs = [_Pair(m, p) for m, p in zip(models, plugins, strict=True)]
        params, buffers = stack_module_state(self.pairs)
        self.params: dict[str, Tensor] = params
        self.buffers: dict[str, Tensor] = buffers
        self._base = copy.deepcopy(self.pairs[0]).to("meta")  # the structure, no storage
        self.sync_trainable()

    def __len__(self) -> int:
        return len(self.pairs)

    def parameters(self) -> list[Tensor]:
        """The stacked parameters (leaves, first dimension N), for an optimiser."""
        return list(self.params.values())

    def sync_trainable(self) -> None:
        """Freeze what the first copy's hooks froze (fastnet's whitening bias after 3 epochs):
        a stacked tensor without ``requires_grad`` gets no gradient, so no step."""
        for name, p in self.pairs[0].named_parameters():
            self.params[name].requires_grad_(p.requires_grad)

    def train(self, mode: bool = True) -> None:
        self._base.train(mode)

    def _call(
        self, method: str, params: dict[str, Tensor], buffers: dict[str, Tensor], *args: Tensor
    ) -> Tensor:
        if method == "forward":
            return functional_call(self._base, (params, buffers), args)
        # functional_call runs forward: swap in the method for the call
        base = self._base
        original = base.forward
        base.forward = getattr(base, method)  # type: ignore[method-assign]
        try:
            return functional_call(base, (params, buffers), args)
        finally:
            base.forward = original  # type: ignore[method-assign]

    def losses(self, xs: Tensor, ys: Tensor) -> Tensor:
        """(N,) training losses of the copies on their own batches ``xs`` (N, B, ...), ``ys``.

        In training mode the BatchNorm statistics of each copy are updated from its own batch.
        """

        def one(
            params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
        ) -> Tensor:
            return self._call("forward", params, buffers, x, y)

        # randomness "different": a copy's dropout draws differ from the others'
        return vmap(one, randomness="different")(self.params, self.buffers, xs, ys)

    def losses_and_correct(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) losses and (N,) correct predictions of the copies on their own batches."""

        def one(
            params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
        ) -> tuple[Tensor, Tensor]:
            return self._call("loss_and_correct", params, buffers, x, y)  # type: ignore[return-value]

        return vmap(one, randomness="different")(self.params, self.buffers, xs, ys)

    def scores(self, xs: Tensor, *, shared: bool = False) -> Tensor:
        """(N, B, K) class scores of each copy on its batch of ``xs`` (N, B, ...), or with
        ``shared`` on the one batch ``xs`` (B, ...) (evaluation: the same test images)."""

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
            return self._call("scores", params, buffers, x)

        in_dims = (0, 0, None if shared else 0)
        return vmap(one, in_dims=in_dims, randomness="different")(self.params, self.buffers, xs)

    @staticmethod
    def finite(losses: Tensor) -> Tensor:
        """(N,) bool on the device: which copies' losses are finite (no host read)."""
        return torch.isfinite(losses)

    @torch.no_grad()
    def read_buffers(self) -> None:
        """Copy each copy's module buffers into the stacked ones: after hooks that change them
        on the modules (POD's delta schedule at the epoch's start and end)."""
        for i, pair in enumerate(self.pairs):
            for name, tensor in pair.named_buffers():
                self.buffers[name][i].copy_(tensor)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each copy's stacked weights and buffers into its own modules (for records,
        checkpoints and evaluation by the ordinary path)."""
        for i, pair in enumerate(self.pairs):
            for name, param in pair.named_parameters():
                param.copy_(self.params[name][i])
            for name, buffer in pair.named_buffers():
                buffer.copy_(self.buffers[name][i])


def _same_but_seed(runs: Sequence[RunSpec]) -> None:
    from podbench.errors import UserError

    first = runs[0].model_dump(exclude={"seed"})
    for run in runs[1:]:
        if run.model_dump(exclude={"seed"}) != first:
            raise UserError(
                "stacked runs must differ in their seed only; group the runs by "
                "everything else first"
            )
    if runs[0].compile or runs[0].grad_clip is not None or runs[0].amp == "fp16":
        raise UserError(
            "stacked runs train without compile, grad_clip and fp16 loss scaling; "
            "set compile: false, grad_clip: null, amp: bf16 or off"
        )


class _Group:
    """The stacked training of several trainers (one per seed); their evaluation stays theirs."""

    def __init__(self, trainers: list[Trainer]) -> None:
        from podbench.factory import _build_optimizer, _build_scheduler
        from podbench.recipe import Lookahead

        self.trainers = trainers
        first = trainers[0].parts
        self.run, self.policy = first.run, trainers[0].policy
        if first.updates != 1:
            raise UserError(
                f"stacked runs need a loss with one update per batch, but "
                f"{first.run.loss} makes {first.updates}; train its runs one by one"
            )
        self.stacked = StackedNets(
            [t.parts.model for t in trainers], [t.parts.plugin for t in trainers]
        )
        self.optimizer = _build_optimizer(
            self.run, [{"params": self.stacked.parameters(), "lr": self.run.lr}]
        )
        self.total = first.total_updates
        self.scheduler = _build_scheduler(self.run, self.optimizer, self.total)
        self.per_update = first.step_scheduler_per_update
        state = [b for k, b in self.stacked.buffers.items() if k.startswith("model.")]
        self.lookahead = (
            Lookahead([*self.stacked.params.values(), *state]) if self.run.lookahead else None
        )
        self.steps = 0
        self.alive = [True] * len(trainers)

    def _start(self, epoch: int) -> None:
        for t in self.trainers:
            t.parts.model.train()
            t.parts.plugin.train()
            t.parts.plugin.on_epoch_start(epoch)
            hook = getattr(t.parts.model, "on_epoch_start", None)
            if callable(hook):
                hook(epoch)
        self.stacked.sync_trainable()
        self.stacked.read_buffers()  # what the hooks (this one and the last epoch's end) changed
        self.stacked.train(True)

    def _step(self, batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        xs = torch.stack([self.policy.prepare(x) for x, _ in batches])
        ys = torch.stack([y for _, y in batches])
        with self.policy.autocast():
            losses, correct = self.stacked.losses_and_correct(xs, ys)
        self.optimizer.zero_grad(set_to_none=True)
        # a diverged copy's NaN stays in its own slices; the others' gradients are their own
        losses.sum().backward()
        self.optimizer.step()
        self.steps += 1
        if self.per_update and self.scheduler is not None and self.steps < self.total:
            self.scheduler.step()
        if self.lookahead is not None:
            self.lookahead.after_step(self.steps, self.total)
        return losses.detach(), correct

    def train_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """Train every copy one epoch; each trainer's history values, in one read."""
        self._start(epoch)
        lr = float(self.optimizer.param_groups[0]["lr"])
        run = self.run
        iters = [
            t.parts.task.train_batches(
                run.batch_size, seed=t.parts.run.seed, epoch=epoch, drop_last=run.drop_last
            )
            for t in self.trainers
        ]
        losses, corrects, sizes = [], [], []
        start = time.perf_counter()
        for batches in itertools.islice(
            zip(*iters, strict=True), self.trainers[0].parts.steps_per_epoch
        ):
            loss, correct = self._step(batches)
            losses.append(loss)
            corrects.append(correct)
            sizes.append(int(batches[0][1].shape[0]))
        if self.policy.device.type == "cuda":
            torch.cuda.synchronize(self.policy.device)
        seconds = time.perf_counter() - start
        if self.scheduler is not None and not self.per_update:
            self.scheduler.step()
        self.stacked.write_back()
        weights = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
        sums = torch.stack(losses).double().T @ weights  # (N,): one read for all copies
        correct_sums = torch.stack(corrects).sum(0)
        seen = sum(sizes)
        entries = []
        for i, (loss_sum, correct) in enumerate(
            zip(sums.tolist(), correct_sums.tolist(), strict=True)
        ):
            progress = self.trainers[i].progress
            progress.train_seconds += seconds  # each copy's images/s: the group's / N
            progress.train_images += seen
            progress.optimizer_steps = self.steps
            self.trainers[i].parts.plugin.on_epoch_end(epoch)
            entries.append(
                {
                    "train_loss": loss_sum / seen,
                    "parts": {},
                    "train_acc": int(correct) / seen,
                    "lr": lr,
                }
            )
        return entries


def train_stacked(runs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """Train runs that differ in their seed only as one stacked model; one record per run.

    Each run is built as :func:`~podbench.engine.train_run` builds it (its own task, weights,
    centroids, data order and augmentation from its seed), trained in one vmapped step with the
    others, and evaluated, probed and recorded on its own. A copy whose loss turns NaN/Inf is
    recorded as diverged at that epoch and the others go on. ``images_per_s`` of each record is
    the group's throughput divided by the number of runs; ``wall_time_s`` the group's.
    """
    from podbench.engine import _environment, _error, _record
    from podbench.factory import build_parts
    from podbench.loop import RunDiverged, Trainer
    from podbench.record import utc_now
    from podbench.runtime import nondeterminism_alerts, runtime_policy

    _same_but_seed(runs)
    started_at, t0, cpu0 = utc_now(), time.perf_counter(), time.process_time()
    outcome: list[tuple[str, Any]] = [("completed", None)] * len(runs)
    geometry: list[dict[str, Any] | None] = [None] * len(runs)
    trainers: list[Trainer] = []
    policy = None
    with nondeterminism_alerts() as nondeterministic_ops:
        try:
            with runtime_policy(runs[0]) as policy:
                trainers = [Trainer(build_parts(run, policy), policy) for run in runs]
                group = _Group(trainers)
                for epoch in range(runs[0].epochs):
                    entries = group.train_epoch(epoch)
                    for i, trainer in enumerate(trainers):
                        if not group.alive[i]:
                            continue
                        trainer.current_epoch = epoch
                        try:
                            if not math.isfinite(entries[i]["train_loss"]):
                                raise RunDiverged(
                                    f"the training loss became NaN/Inf in epoch {epoch}"
                                )
                            entry, _, geometry[i] = trainer._epoch(epoch, entries[i])
                            trainer.progress.history.append(entry)
                        except FloatingPointError as exc:
                            group.alive[i], outcome[i] = False, ("diverged", _error(exc, epoch))
                        except Exception as exc:  # noqa: BLE001  one run's failure is its record's
                            group.alive[i], outcome[i] = False, ("failed", _error(exc, epoch))
                    if not any(group.alive):
                        break
        except Exception as exc:  # building or the stacked step failed: every run with it
            outcome = [o if o[0] != "completed" else ("failed", _error(exc, None)) for o in outcome]
    env = _environment(policy, nondeterministic_ops)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return [
        _record(
            run,
            trainers[i] if trainers else None,
            status=outcome[i][0],
            error=outcome[i][1],
            geometry=geometry[i],
            env=env,
            wall_time_s=wall,
            cpu_time_s=cpu,
            started_at=started_at,
        )
        for i, run in enumerate(runs)
    ]
