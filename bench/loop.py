"""The training loop of one run: train an epoch, evaluate, run the probes, fit all epochs.

Per batch, for each of the plugin's ``updates_per_batch`` steps: features = model(x) (under
autocast when AMP is on, the projection to the latent space in float32), loss =
plugin.update_loss(features, y, step) (in float32), backward, optional gradient clipping,
optimiser step.

Host syncs (the host waiting for a GPU): none per training batch after the run's first, whose
inputs the plugin checks; per epoch, one read of the epoch's sums, the wait that times the
epoch, and what the plugin's epoch hooks read; per evaluation, one read (three at the last
epoch, with the features for the geometry). Divergence is watched on the device
(:class:`FiniteWatch`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from podbench.checkpoints import CHECKPOINT_NAME, TrainingProgress, load_checkpoint, save_checkpoint
from podbench.factory import RunParts, build_parts
from podbench.geometry import plugin_geometry
from podbench.recipe import tta_scores
from podbench.runs import RunSpec
from podbench.runtime import RunPolicy
from podbench.tensorboard import RunCurves

__all__ = ["Trainer", "RunDiverged", "FiniteWatch"]

CHECK_EVERY = 25  # training batches between two looks at whether the losses stayed finite


class RunDiverged(FloatingPointError):
    """The loss or the weights became NaN/Inf."""


class FiniteWatch:
    """Whether every training loss so far was finite, known on the host without waiting.

    Each check folds the newest losses into a flag on the device and queues its copy into pinned
    host memory; the host reads whatever copy has arrived. The flag only ever turns false, so a
    late copy is a true answer for an earlier batch: divergence is seen a check or so late.
    """

    def __init__(self, device: torch.device) -> None:
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self._host = torch.ones((), dtype=torch.bool, pin_memory=device.type == "cuda")
        self._seen = self._host.numpy()  # a view: read with no torch call

    def fold(self, losses: torch.Tensor) -> bool:
        """Fold ``losses`` in; False once a non-finite one has reached the host."""
        self.ok &= torch.isfinite(losses).all()
        self._host.copy_(self.ok, non_blocking=True)
        return bool(self._seen)


class _EpochSums:
    """A training epoch's per-batch values, kept on the device (append is the cheapest op) until
    the epoch's one read."""

    def __init__(self) -> None:
        self.totals: list[torch.Tensor] = []
        self.parts: list[dict[str, torch.Tensor]] = []
        self.corrects: list[torch.Tensor] = []
        self.sizes: list[int] = []

    def read(
        self, params: list[torch.nn.Parameter], device: torch.device
    ) -> tuple[float, dict[str, float], float, bool]:
        """(loss sum, sums of its parts, correct predictions, whether the weights are finite),
        the loss weighted by batch size, in one read from the device."""
        names = list(self.parts[0])
        per_batch = torch.stack(
            [torch.stack(self.totals), *(torch.stack([p[n] for p in self.parts]) for n in names)]
        )
        weights = torch.tensor(self.sizes, dtype=torch.float64).to(device, non_blocking=True)
        finite_weights = torch.stack([torch.isfinite(p).all() for p in params]).all()
        loss_sum, *part_sums, correct, weights_ok = torch.cat(
            [
                per_batch.to(torch.float64) @ weights,
                torch.stack(self.corrects).sum().to(torch.float64)[None],
                finite_weights.to(torch.float64)[None],
            ]
        ).tolist()
        return loss_sum, dict(zip(names, part_sums, strict=True)), correct, bool(weights_ok)


class Trainer:
    """One run's training and evaluation over its :class:`~podbench.factory.RunParts`.

    :func:`~podbench.engine.train_run` builds it inside :func:`~podbench.runtime.runtime_policy`;
    :meth:`of_run` builds one without applying the policy to torch (tests, benchmarks).
    """

    def __init__(
        self, parts: RunParts, policy: RunPolicy, checkpoint_dir: Path | None = None
    ) -> None:
        self.parts = parts
        self.policy = policy
        self.device = policy.device
        self.checkpoint_dir = checkpoint_dir
        self.watch = FiniteWatch(self.device)
        self.progress = TrainingProgress()
        self.current_epoch: int | None = None
        self.evaluation: dict[str, dict[str, float | None]] = dict(parts.evaluation)
        if checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_NAME).is_file():
            resumed = load_checkpoint(checkpoint_dir / CHECKPOINT_NAME, parts, self.device)
            self.progress = resumed or self.progress

    @classmethod
    def of_run(cls, run: RunSpec, checkpoint_dir: Path | None = None) -> Trainer:
        """A trainer for ``run``, built without touching torch's global settings."""
        policy = RunPolicy.of(run)
        return cls(build_parts(run, policy), policy, checkpoint_dir)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The features of a batch: in the run's memory format, under its autocast."""
        with self.policy.autocast():
            return self.parts.forward(self.policy.prepare(x))

    # -- one epoch ------------------------------------------------------------------------

    def _update(self, x: torch.Tensor, y: torch.Tensor, sums: _EpochSums) -> None:
        """The plugin's updates on one batch; the batch's loss and accuracy before them."""
        parts, run = self.parts, self.parts.run
        scheduler, optimizer, scaler = parts.scheduler, parts.optimizer, parts.scaler
        for step in range(parts.updates):
            with self.policy.autocast():
                features = parts.forward(x)
            out = parts.plugin.update_loss(features, y, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.total).backward()
            if run.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parts.params, run.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            self.progress.optimizer_steps += 1
            if parts.step_scheduler_per_update and scheduler is not None:
                if self.progress.optimizer_steps < parts.total_updates:
                    scheduler.step()
            if parts.lookahead is not None:  # Python ints: no host sync
                parts.lookahead.after_step(self.progress.optimizer_steps, parts.total_updates)
            if step == 0:
                sums.totals.append(out.total.detach())
                sums.parts.append({k: v.detach() for k, v in out.parts.items()})
                with torch.no_grad():
                    predicted = parts.plugin.predict(features.detach()).argmax(dim=1)
                    sums.corrects.append((predicted == y).sum())
        sums.sizes.append(int(y.shape[0]))

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch``; its history entry's training values."""
        parts, run = self.parts, self.parts.run
        parts.model.train()
        parts.plugin.train()
        parts.plugin.on_epoch_start(epoch)
        hook = getattr(parts.model, "on_epoch_start", None)
        if callable(hook):  # fastnet freezes its whitening bias after 3 epochs
            hook(epoch)
        lr = float(parts.optimizer.param_groups[0]["lr"])
        sums = _EpochSums()
        batches = parts.task.train_batches(
            run.batch_size, seed=run.seed, epoch=epoch, drop_last=run.drop_last
        )
        start = time.perf_counter()
        # islice: a batch past max_steps is never made
        for index, (x, y) in enumerate(itertools.islice(batches, parts.steps_per_epoch)):
            self._update(self.policy.prepare(x), y, sums)
            # The plugin checked the run's first batch (shapes, labels, finite features); later
            # value checks would read the device every update: the watch takes over.
            parts.plugin.check_values = False
            totals = sums.totals
            if len(totals) % CHECK_EVERY == 0 and not self.watch.fold(
                torch.stack(totals[-CHECK_EVERY:])
            ):
                raise RunDiverged(
                    f"the training loss became NaN/Inf by batch {index} of epoch {epoch}"
                )
        if self.device.type == "cuda":  # the epoch's time includes the work queued for it
            torch.cuda.synchronize(self.device)
        self.progress.train_seconds += time.perf_counter() - start
        seen = sum(sums.sizes)
        self.progress.train_images += seen
        parts.plugin.on_epoch_end(epoch)
        if seen == 0:
            raise RuntimeError(
                "the training split yielded no batch; check limit_train and batch_size"
            )
        loss_sum, part_sums, correct, weights_ok = sums.read(parts.params, self.device)
        train_loss = loss_sum / seen
        if not math.isfinite(train_loss):
            raise RunDiverged(f"the training loss became NaN/Inf in epoch {epoch}")
        if not weights_ok:
            raise RunDiverged(f"the weights became NaN/Inf in epoch {epoch}")
        return {
            "train_loss": train_loss,
            "parts": {name: value / seen for name, value in part_sums.items()},
            "train_acc": int(correct) / seen,
            "lr": lr,
        }

    @torch.no_grad()
    def evaluate(
        self, split: str, *, keep_features: bool
    ) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
        """Accuracy on ``split``; with ``keep_features``, also its features and labels (CPU)."""
        parts = self.parts
        parts.model.eval()
        parts.plugin.eval()
        parts.plugin.check_values = False  # no read per batch: the epoch's end checked the weights
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        feats: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        for x, y in parts.task.eval_batches(split, parts.run.batch_size):
            if parts.run.tta:  # airbench's test-time augmentation: the scores of 6 views
                scores = tta_scores(self.forward, parts.plugin.predict, self.policy.prepare(x))
                if keep_features:  # the geometry's features: of the image itself
                    features = self.forward(x)
            else:
                features = self.forward(x)
                scores = parts.plugin.predict(features)
            correct += (scores.argmax(dim=1) == y).sum()
            count += y.shape[0]
            if keep_features:  # kept on the device: one copy to the host at the end
                feats.append(features.float())
                labels.append(y)
        if count == 0:
            raise RuntimeError(f"the {split} split yielded no sample; check limit_eval")
        accuracy = int(correct) / count
        if keep_features:
            return accuracy, torch.cat(feats).cpu(), torch.cat(labels).cpu()
        return accuracy, None, None

    def probe(self, epoch: int, last: bool) -> dict[str, dict[str, float | None]]:
        """The values of the probes due after ``epoch`` (the model in eval mode)."""
        from podbench.probes.runner import probes_due, run_probes

        parts = self.parts
        parts.model.eval()
        parts.plugin.eval()
        with torch.no_grad():
            return run_probes(
                parts.run,
                probes_due(parts.run.evaluate, epoch, last),
                forward=self.forward,
                predict=parts.plugin.predict,
                task=parts.task,
            )

    def _geometry(
        self, feats: torch.Tensor | None, labels: torch.Tensor | None
    ) -> dict[str, Any] | None:
        if feats is None or labels is None:
            return None
        return plugin_geometry(self.parts.plugin, feats, labels)

    # -- the run --------------------------------------------------------------------------

    def _epoch(
        self, epoch: int, trained: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """Train and evaluate ``epoch``: (history entry, probe values, geometry at the last).

        ``trained``: the epoch's training values when it was trained elsewhere (stacked seeds,
        :func:`podbench.stacked.train_stacked`): only the evaluation is done here.
        """
        parts, run = self.parts, self.parts.run
        start = time.perf_counter()
        entry_train = self.train_epoch(epoch) if trained is None else trained
        if parts.scheduler is not None and not parts.step_scheduler_per_update:
            parts.scheduler.step()
        last = epoch == run.epochs - 1
        acc, feats, labels = self.evaluate(run.eval_split, keep_features=last)
        entry = {
            "epoch": epoch,
            **entry_train,
            "test_acc": acc if run.eval_split == "test" else None,
            "val_acc": acc if run.eval_split == "val" else None,
            "seconds": time.perf_counter() - start,
        }
        values = self.probe(epoch, last)
        if values and not last:
            entry["evaluation"] = values
        if last:
            self.evaluation.update(values)
        return entry, values, self._geometry(feats, labels) if last else None

    def fit(
        self, on_epoch: Callable[[dict[str, Any]], None] | None, curves: RunCurves | None = None
    ) -> dict[str, Any] | None:
        """Train all epochs; returns the geometry of the last evaluation."""
        run = self.parts.run
        if self.progress.start_epoch >= run.epochs:  # trained before its record was written
            _, feats, labels = self.evaluate(run.eval_split, keep_features=True)
            self.evaluation.update(self.probe(run.epochs - 1, last=True))
            return self._geometry(feats, labels)
        geometry = None
        for epoch in range(self.progress.start_epoch, run.epochs):
            self.current_epoch = epoch
            state = (
                self.parts.plugin.epoch_state()
            )  # the loss's state during this epoch (POD: delta)
            entry, values, geometry = self._epoch(epoch)
            self.progress.history.append(entry)
            if self.checkpoint_dir is not None:
                save_checkpoint(self.checkpoint_dir, self.parts, self.progress, epoch, self.device)
            if curves is not None:
                curves.epoch(entry, state, geometry, values)
            if on_epoch is not None:
                on_epoch(dict(entry))
        return geometry
