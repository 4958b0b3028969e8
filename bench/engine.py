"""The training engine: one function, :func:`train_run`, for suites, tuning and benchmarks.

``train_run(run)`` builds the task, the network and the loss plugin a :class:`RunSpec` names,
trains for ``run.epochs`` epochs with per-epoch evaluation, and returns the run record (a
:class:`~podbench.record.RunRecord` as plain JSON). It never raises for a plugin error or a
diverging run: the record says ``failed`` (with the traceback) or ``diverged`` (with the epoch).
Only KeyboardInterrupt and other BaseExceptions escape.

Per batch, for each of the plugin's ``updates_per_batch`` steps: features = model(x) (under
autocast when AMP is on, the projection to the latent space in float32), loss =
plugin.update_loss(features, y, step) (in float32), backward, optional gradient clipping,
optimiser step.

Host syncs (the host waiting for a GPU): none per training batch after the run's first, whose
inputs the plugin checks; per epoch, one read of the epoch's sums, the wait that times the
epoch, and what the plugin's epoch hooks read; per evaluation, one read (three at the last
epoch, with the features for the geometry). Divergence is watched on the device
(:class:`_FiniteWatch`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import platform
import random
import socket
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from podbench.compiled import warm_up
from podbench.geometry import plugin_geometry
from podbench.record import RunError, RunRecord, package_version, utc_now
from podbench.runs import RunSpec
from podbench.tensorboard import RunCurves

__all__ = [
    "train_run", "RunDiverged", "environment", "nondeterminism_alerts", "seed_everything"
]

CHECKPOINT_NAME = "last.pt"
# how torch words the alert for an op without a deterministic kernel ("put_ does not have ...")
NONDETERMINISTIC_ALERT = " does not have a deterministic implementation"


class RunDiverged(FloatingPointError):
    """The loss or the weights became NaN/Inf."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices); choose deterministic or the fastest kernels.

    ``deterministic``: deterministic kernels with cudnn.benchmark off (reproducible, slower on a
    GPU); False: cudnn.benchmark on and whatever kernels are fastest. An op that has no
    deterministic kernel (on CUDA: adaptive average pooling's backward, scatter-add, ...) still
    runs, with torch's warning, which :func:`nondeterminism_alerts` turns into the record's
    ``env.nondeterministic_ops``: failing every ResNet run on a GPU would make the setting useless,
    hiding the warning in a Ray worker's log would make it a false promise.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:  # cuBLAS needs this set before its first use to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@contextlib.contextmanager
def nondeterminism_alerts() -> Iterator[list[str]]:
    """Collect the ops torch warned have no deterministic kernel, in order of first use.

    Other warnings raised inside pass through unchanged (shown after the block, through the
    filters that were in force before it).
    """
    ops: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # once per op and place, not once per training step
            warnings.filterwarnings("default", message=".*" + NONDETERMINISTIC_ALERT)
            yield ops
    finally:
        for w in caught:
            text = str(w.message)
            if NONDETERMINISTIC_ALERT in text:
                op = text.split(NONDETERMINISTIC_ALERT, 1)[0].strip()
                if op not in ops:
                    ops.append(op)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                       source=w.source)


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's random states a resumed run needs: the CPU's, and the run's GPU's when on CUDA."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":  # dropout, augmentation and centroids may draw on the GPU
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back what :func:`rng_states` saved (a CPU-only checkpoint leaves the GPU's alone)."""
    torch.set_rng_state(states["cpu"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(
    device: torch.device,
    deterministic: bool | None = None,
    tf32: bool | None = None,
    nondeterministic_ops: list[str] | None = None,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Where and with what a run ran (the record's ``env``).

    ``nondeterministic_ops``: with deterministic kernels on, the ops that had none (torch warned).
    """
    import podbench

    name = "cpu"
    if device.type == "cuda":
        name = f"cuda:{torch.cuda.get_device_name(device)}"
    return {
        "podbench": podbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": name,
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
        "ray": package_version("ray"),
        "threads": torch.get_num_threads(),
        "deterministic": deterministic,
        "nondeterministic_ops": nondeterministic_ops if deterministic else None,
        "tf32": tf32,
        "channels_last": channels_last,
    }


def check_amp(amp: str, device: torch.device) -> None:
    """A UserError when ``amp: bf16`` asks a GPU without native bfloat16 (before Ampere)."""
    from podbench.errors import UserError

    # including_emulation=False: emulated bf16 is slower than float32 on those cards
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(
            including_emulation=False):
        raise UserError(
            f"amp: bf16 needs a GPU with native bfloat16 (compute capability 8.0 or newer), "
            f"but {torch.cuda.get_device_name(device)} has none; set amp: fp16 or amp: off."
        )


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    """The channels-last layout: as set, or with ``auto`` on CUDA only, where tensor-core
    convolutions want it; on the CPU its gain is not established here, so auto leaves it off."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def use_tf32(device: torch.device, amp: str) -> bool:
    """Allow TF32 for float32 matmuls and convolutions: on CUDA with ``amp: off``, unless the
    run asked for deterministic kernels (set before), or AMP runs (whose float32 parts, the
    latent projection and the loss, are float32 on purpose). Returns the choice."""
    on = device.type == "cuda" and amp == "off" and not torch.are_deterministic_algorithms_enabled()
    torch.set_float32_matmul_precision("high" if on else "highest")
    torch.backends.cudnn.allow_tf32 = on
    return on


def _latent_in_float32(model: nn.Module) -> None:
    """Run the model's projection to the latent space (``model.proj``) in float32 under autocast.

    Autocast would round the features to bf16/fp16 before the float32 loss: POD's small SC
    term and the geometry statistics would see quantised features. The state dict is unchanged.
    """
    proj = getattr(model, "proj", None)
    if not isinstance(proj, nn.Module):
        return
    inner = proj.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return inner(x.float())

    proj.forward = forward  # type: ignore[method-assign]


def stream_budget(gpus: float, device: torch.device) -> int | None:
    """Decoded bytes this run may hold in memory: the stream threshold times its share of a GPU.

    None (the threshold itself) for a whole GPU or the CPU.
    """
    from podbench.tasks.datasets import stream_threshold

    if device.type != "cuda" or not 0 < gpus < 1:
        return None
    return int(stream_threshold() * gpus)


class _FiniteWatch:
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


def _error(exc: BaseException, epoch: int | None) -> RunError:
    return RunError(
        type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        epoch=epoch,
    )


def _data_conditions(run: RunSpec) -> tuple[tuple[int, ...] | None, Any]:
    """The open-set classes and the label-noise model a run trains under (None: none)."""
    from podbench.errors import UserError
    from podbench.tasks import LabelNoise, dataset_info, open_set_classes

    known = None
    if run.open_set is not None:
        num_classes = dataset_info(run.dataset).num_classes
        if num_classes is None:
            raise UserError(f"open_set: dataset '{run.dataset}' has no fixed number of classes; "
                            "use a dataset with known classes.")
        known = open_set_classes(int(num_classes), run.open_set.known, run.open_set.seed)
    noise = None
    if run.label_noise is not None:
        seed = run.seed if run.label_noise.seed is None else run.label_noise.seed
        noise = LabelNoise(run.label_noise.kind, run.label_noise.rate, seed)
    return known, noise


class _Trainer:
    """The state of one run; :func:`train_run` is its only user."""

    def __init__(self, run: RunSpec, checkpoint_dir: Path | None) -> None:
        from podbench.losses import create_loss
        from podbench.spec_files import import_plugins
        from podbench.tasks import Task, create_arch, load_task, prepare_model, resolve_device

        import_plugins(run.imports)  # plugins registered by modules the suite names
        self.run = run
        self.device = resolve_device(run.device)
        self.checkpoint_dir = checkpoint_dir
        seed_everything(run.seed, run.deterministic)
        check_amp(run.amp, self.device)
        self.tf32 = use_tf32(self.device, run.amp)
        self.channels_last = use_channels_last(run.channels_last, self.device)
        known, noise = _data_conditions(run)
        # each split once: the training split at limit_train, the evaluated ones at limit_eval
        self.task: Task = load_task(
            run.dataset, run.data_root, device=self.device, val_fraction=run.val_fraction,
            split_seed=run.split_seed, image_size=run.image_size,
            use_val=run.eval_split == "val" or bool(run.evaluate),  # probes fit T on validation
            limit={"train": run.limit_train, "val": run.limit_eval, "test": run.limit_eval},
            known_classes=known, label_noise=noise,
            stream_bytes=stream_budget(run.gpus, self.device), channels_last=self.channels_last,
            # streamed data: DataLoader workers within the run's CPU share, not the machine's
            workers=min(8, int(run.cpus)),
        )
        info = self.task.info
        num_classes = len(self.task.classes)  # image folders know their classes only when read
        self.num_classes = num_classes
        torch.manual_seed(run.seed)
        self.model: nn.Module = create_arch(
            run.arch, in_channels=info.channels, image_size=self.task.image_size,
            feat_dim=run.feat_dim,
        )
        if run.amp != "off":  # before compiling: the compiled graph keeps the float32 projection
            _latent_in_float32(self.model)
        # prepare_model moves and converts self.model in place; checkpoints save self.model, whose
        # state_dict keys lack the compiled wrapper's "_orig_mod." prefix
        self.forward: Callable[[torch.Tensor], torch.Tensor] = prepare_model(
            self.model, self.device, channels_last=self.channels_last, compile=run.compile,
            compile_threads=run.cpus,
        )
        self._init_from_data()
        torch.manual_seed(run.seed)  # centroids do not depend on the architecture's draws
        self.plugin = create_loss(
            run.loss, num_classes=num_classes, feat_dim=run.feat_dim,
            variant=run.variant, **run.loss_params,
        ).to(self.device)
        # one group, or the plugin's parameters apart at their own learning rate (proxies)
        groups = self.plugin.param_groups(list(self.model.parameters()), run.lr)
        self.params = [p for group in groups for p in group["params"]]
        # fp16: a fused optimiser skips a step with inf gradients on the device; otherwise the
        # loss scaler reads its inf check back on every update
        fused = True if run.amp == "fp16" else None
        if run.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay,
                nesterov=run.nesterov, fused=fused,
            )
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=run.lr, weight_decay=run.weight_decay,
                                               fused=fused)
        self.updates = int(getattr(self.plugin, "updates_per_batch", 1))
        batches = math.ceil(self.task.num_train / run.batch_size)
        self.steps_per_epoch = min(batches, run.max_steps) if run.max_steps else batches
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.step_scheduler_per_update = run.schedule == "onecycle"
        if run.schedule == "multistep":
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=list(run.milestones), gamma=run.gamma
            )
        elif run.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=run.epochs)
        elif run.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=[group["lr"] for group in groups],
                total_steps=max(1, run.epochs * self.steps_per_epoch * self.updates),
            )
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[run.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=run.amp == "fp16")
        self.watch = _FiniteWatch(self.device)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.train_images = 0
        self.train_seconds = 0.0
        self.optimizer_steps = 0
        self.current_epoch: int | None = None
        self.evaluation: dict[str, dict[str, float | None]] = {}
        if noise is not None:  # the noise the training labels carry, nominal and realised
            self.evaluation["label-noise"] = {"rate": noise.rate,
                                              "changed": self.task.label_noise_rate}
        if checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_NAME).is_file():
            self._load_checkpoint(checkpoint_dir / CHECKPOINT_NAME)
        if run.compile:  # compile now, so that compile time is not training time (images/s)
            warm_up(self.model, self.forward, self._warm_up_shapes(), self.autocast,
                    memory_format=torch.channels_last if self.channels_last else None)

    def _init_from_data(self) -> None:
        """A backbone's data-dependent initialisation, from a shuffled training batch only."""
        samples = int(getattr(self.model, "init_samples", 0))
        if samples:
            images, _ = next(iter(self.task.train_batches(samples, seed=self.run.seed, epoch=0)))
            self.model.init_from_data(images)  # type: ignore[operator]

    def _warm_up_shapes(self) -> list[tuple[bool, tuple[int, ...]]]:
        """(training, input shape) of every batch shape the run will see."""
        size = self.task.image_size
        channels = self.task.info.channels
        bs = self.run.batch_size
        train = {min(bs, self.task.num_train), self.task.num_train % bs}
        evaluated = self.task.num_samples(self.run.eval_split)
        evals = {min(bs, evaluated), evaluated % bs}
        return [(mode, (n, channels, size, size)) for mode, sizes in ((True, train), (False, evals))
                for n in sorted(sizes) if n > 0]

    # -- one epoch ------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        run = self.run
        self.model.train()
        self.plugin.train()
        self.plugin.on_epoch_start(epoch)
        lr = float(self.optimizer.param_groups[0]["lr"])
        # Per-batch values stay on the device in lists (append is the cheapest op) and are read
        # once, at the end of the epoch; every `check_every` batches the watch folds them in.
        totals: list[torch.Tensor] = []
        parts: list[dict[str, torch.Tensor]] = []
        corrects: list[torch.Tensor] = []
        sizes: list[int] = []
        check_every = 25
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = self.task.train_batches(
            run.batch_size, seed=run.seed, epoch=epoch
        )
        start = time.perf_counter()
        # islice: a batch past max_steps is never made
        for index, (x, y) in enumerate(itertools.islice(batches, self.steps_per_epoch)):
            x = self._prepare(x)
            for step in range(self.updates):
                with self.autocast():
                    features = self.forward(x)
                out = self.plugin.update_loss(features, y, step)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.total).backward()
                if run.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.params, run.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer_steps += 1
                if self.step_scheduler_per_update and self.scheduler is not None:
                    if self.optimizer_steps < self.scheduler.total_steps:  # type: ignore[attr-defined]
                        self.scheduler.step()
                if step == 0:  # the batch's loss and accuracy before its updates
                    totals.append(out.total.detach())
                    parts.append({k: v.detach() for k, v in out.parts.items()})
                    with torch.no_grad():
                        corrects.append((self.plugin.predict(features.detach()).argmax(dim=1) == y).sum())
            # The plugin checked the run's first batch (shapes, labels, finite features); later
            # value checks would read the device every update: the watch takes over.
            self.plugin.check_values = False
            sizes.append(int(y.shape[0]))
            if len(totals) % check_every == 0 and not self.watch.fold(torch.stack(totals[-check_every:])):
                raise RunDiverged(f"the training loss became NaN/Inf by batch {index} of epoch {epoch}")
        if self.device.type == "cuda":  # the epoch's time includes the work queued for it
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - start
        seen = sum(sizes)
        self.train_images += seen
        self.plugin.on_epoch_end(epoch)
        if seen == 0:
            raise RuntimeError("the training split yielded no batch; check limit_train and batch_size")
        # the epoch's one read: weighted sums of the loss and its parts, correct predictions,
        # and whether the weights are finite
        names = list(parts[0])
        per_batch = torch.stack([torch.stack(totals), *(torch.stack([p[n] for p in parts]) for n in names)])
        weights = torch.tensor(sizes, dtype=torch.float64).to(self.device, non_blocking=True)
        finite_weights = torch.stack([torch.isfinite(p).all() for p in self.params]).all()
        loss_sum, *part_sums, correct, weights_ok = torch.cat([
            per_batch.to(torch.float64) @ weights,
            torch.stack(corrects).sum().to(torch.float64)[None],
            finite_weights.to(torch.float64)[None],
        ]).tolist()
        train_loss = loss_sum / seen
        if not math.isfinite(train_loss):
            raise RunDiverged(f"the training loss became NaN/Inf in epoch {epoch}")
        if not weights_ok:
            raise RunDiverged(f"the weights became NaN/Inf in epoch {epoch}")
        return {
            "train_loss": train_loss,
            "parts": {name: value / seen for name, value in zip(names, part_sums, strict=True)},
            "train_acc": int(correct) / seen,
            "lr": lr,
        }

    @torch.no_grad()
    def evaluate(self, split: str, *, keep_features: bool) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
        self.model.eval()
        self.plugin.eval()
        self.plugin.check_values = False  # no read per batch: the epoch's end checked the weights
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        feats: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        for x, y in self.task.eval_batches(split, self.run.batch_size):
            with self.autocast():
                features = self.forward(self._prepare(x))
            correct += (self.plugin.predict(features).argmax(dim=1) == y).sum()
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

        def forward(x: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return self.forward(self._prepare(x))

        self.model.eval()
        self.plugin.eval()
        with torch.no_grad():
            return run_probes(self.run, probes_due(self.run.evaluate, epoch, last),
                              forward=forward, predict=self.plugin.predict, task=self.task)

    # -- checkpoints ----------------------------------------------------------------------

    def _save_checkpoint(self, epoch: int) -> None:
        assert self.checkpoint_dir is not None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": epoch,
            "run_id": self.run.run_id,
            "model": self.model.state_dict(),
            "plugin": self.plugin.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "train_images": self.train_images,
            "train_seconds": self.train_seconds,
            "optimizer_steps": self.optimizer_steps,
            "rng": rng_states(self.device),
        }
        path = self.checkpoint_dir / CHECKPOINT_NAME
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a killed run leaves the previous checkpoint intact

    def _load_checkpoint(self, path: Path) -> None:
        # weights_only: a checkpoint file cannot run code when loaded
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("run_id") != self.run.run_id:
            return  # a different run's checkpoint: start afresh
        self.model.load_state_dict(state["model"])
        self.plugin.load_state_dict(state["plugin"])
        if self.scheduler is not None:  # replay the schedule up to where the run stopped
            replay = state["optimizer_steps"] if self.step_scheduler_per_update else state["epoch"] + 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(replay):
                    self.scheduler.step()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.train_images = int(state["train_images"])
        self.train_seconds = float(state["train_seconds"])
        self.optimizer_steps = int(state["optimizer_steps"])
        # checkpoints written before the GPU's state was kept hold the CPU's as "torch_rng"
        restore_rng_states(state.get("rng") or {"cpu": state["torch_rng"]}, self.device)
        self.start_epoch = int(state["epoch"]) + 1

    def _geometry(
        self, feats: torch.Tensor | None, labels: torch.Tensor | None
    ) -> dict[str, Any] | None:
        if feats is None or labels is None:
            return None
        return plugin_geometry(self.plugin, feats, labels)

    # -- the run --------------------------------------------------------------------------

    def fit(
        self, on_epoch: Callable[[dict[str, Any]], None] | None, curves: RunCurves | None = None
    ) -> dict[str, Any] | None:
        """Train all epochs; returns the geometry of the last evaluation."""
        run = self.run
        geometry = None
        if self.start_epoch >= run.epochs:  # trained before its record was written: re-measure
            _, feats, labels = self.evaluate(run.eval_split, keep_features=True)
            self.evaluation.update(self.probe(run.epochs - 1, last=True))
            return self._geometry(feats, labels)
        for epoch in range(self.start_epoch, run.epochs):
            self.current_epoch = epoch
            start = time.perf_counter()
            state = self.plugin.epoch_state()  # the loss's state during this epoch (POD: delta)
            entry_train = self.train_epoch(epoch)
            if self.scheduler is not None and not self.step_scheduler_per_update:
                self.scheduler.step()
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
            self.history.append(entry)
            if last:
                geometry = self._geometry(feats, labels)
                self.evaluation.update(values)
            if self.checkpoint_dir is not None:
                self._save_checkpoint(epoch)
            if curves is not None:
                curves.epoch(entry, state, geometry, values)
            if on_epoch is not None:
                on_epoch(dict(entry))
        return geometry


def train_run(
    run: RunSpec,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    tensorboard_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run; return its record (never raises for plugin errors or NaN).

    Args:
        run: the fully resolved run.
        on_epoch: called with each epoch's history entry (for Ray reporting, pruning).
        checkpoint_dir: where to keep ``last.pt`` after each epoch; an existing checkpoint of the
            same run is resumed from. None: no checkpoints.
        tensorboard_dir: where to write the run's TensorBoard event files (per-epoch curves, then
            the hyperparameters with the final metrics). None: none.

    Returns:
        The run record: :meth:`RunRecord.to_json_dict` of a validated :class:`RunRecord`.
    """
    started_at = utc_now()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    status = "completed"
    error: RunError | None = None
    geometry: dict[str, Any] | None = None
    trainer: _Trainer | None = None
    curves: RunCurves | None = None
    device = torch.device("cpu")
    deterministic_used: bool | None = None
    # seed_everything switches torch to deterministic kernels for this run only
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn_flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    precision = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    with nondeterminism_alerts() as nondeterministic_ops:  # filled when the block ends
        try:
            trainer = _Trainer(run, checkpoint_dir)
            device = trainer.device
            deterministic_used = torch.are_deterministic_algorithms_enabled()
            if tensorboard_dir is not None:
                curves = RunCurves(tensorboard_dir, run, first_epoch=trainer.start_epoch)
            geometry = trainer.fit(on_epoch, curves)
        except FloatingPointError as exc:  # RunDiverged, or a plugin's NonFiniteFeaturesError
            status, error = "diverged", _error(exc, getattr(trainer, "current_epoch", None))
        except Exception as exc:  # a plugin or data error must not stop the suite
            status, error = "failed", _error(exc, getattr(trainer, "current_epoch", None))
        finally:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn_flags
            torch.set_float32_matmul_precision(precision[0])  # use_tf32 chose for this run only
            torch.backends.cudnn.allow_tf32 = precision[1]
    history = trainer.history if trainer is not None else []
    accs = [h["test_acc"] for h in history if h.get("test_acc") is not None]
    images_per_s = None
    if trainer is not None and trainer.train_seconds > 0:
        images_per_s = trainer.train_images / trainer.train_seconds
    record = RunRecord.of_run(  # the record turns a NaN loss (a diverged epoch) into null
        run,
        num_classes=getattr(trainer, "num_classes", None),  # None when the data never loaded
        status=status,
        error=error,
        history=history,
        final_test_acc=accs[-1] if accs else None,
        best_test_acc=max(accs) if accs else None,
        epochs_completed=len(history),
        wall_time_s=time.perf_counter() - t0,
        cpu_time_s=time.process_time() - cpu0,  # this process's CPU time, all threads
        images_per_s=images_per_s,
        geometry=geometry,
        evaluation=trainer.evaluation if trainer is not None else {},
        env=environment(device, deterministic_used, getattr(trainer, "tf32", None),
                        nondeterministic_ops, getattr(trainer, "channels_last", None)),
        started_at=started_at,
        finished_at=utc_now(),
    )
    result = record.to_json_dict()
    if curves is not None:
        curves.finish(result)
    return result
