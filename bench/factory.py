"""From a :class:`~podbench.runs.RunSpec` to the parts of its run: task, model, loss plugin,
optimiser, learning-rate schedule and loss scaler (:func:`build_parts`).

Building changes no torch setting: the :class:`~podbench.runtime.RunPolicy` it is given says the
device and the numeric choices, and :func:`~podbench.runtime.runtime_policy` is what applies
them. What is random (the network's initial weights, the loss's centroids) is seeded from the
run's seed, each part on its own, so that one part's draws do not depend on another's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from podbench.compiled import warm_up
from podbench.recipe import Lookahead, schedule_warmup, triangular
from podbench.runs import RunSpec
from podbench.runtime import RunPolicy

if TYPE_CHECKING:
    from podbench.losses import LossPlugin
    from podbench.tasks import LabelNoise, Task

__all__ = ["RunParts", "build_parts", "stream_budget", "warm_up_shapes"]

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RunParts:
    """What one run trains and evaluates with, freshly built (see :func:`build_parts`).

    ``model`` is the network whose state a checkpoint saves; ``forward`` runs it (compiled when
    the run asks; the compiled wrapper's state-dict keys would carry an ``_orig_mod.`` prefix).
    ``evaluation`` starts the record's ``evaluation`` (the label noise the training labels carry).
    """

    run: RunSpec
    task: Task
    model: nn.Module
    forward: Forward
    plugin: LossPlugin
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    updates: int = 1
    evaluation: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # airbench's weight averaging (lookahead: true), of the network's state and the loss's head
    lookahead: Lookahead | None = None

    @property
    def total_updates(self) -> int:
        """Optimiser updates of the whole run (the per-update schedules' and lookahead's T)."""
        return max(1, self.run.epochs * self.steps_per_epoch * self.updates)

    @property
    def num_classes(self) -> int:
        return len(self.task.classes)  # image folders know their classes only when read

    @property
    def step_scheduler_per_update(self) -> bool:
        """One-cycle and triangular step their schedule per optimiser update; the others once
        per epoch."""
        return self.run.schedule in ("onecycle", "triangular")


def stream_budget(gpus: float, device: torch.device) -> int | None:
    """Decoded bytes this run may hold in memory: the stream threshold times its share of a GPU.

    None (the threshold itself) for a whole GPU or the CPU.
    """
    from podbench.tasks.datasets import stream_threshold

    if device.type != "cuda" or not 0 < gpus < 1:
        return None
    return int(stream_threshold() * gpus)


def _data_conditions(run: RunSpec) -> tuple[tuple[int, ...] | None, LabelNoise | None]:
    """The open-set classes and the label-noise model a run trains under (None: none)."""
    from podbench.errors import UserError
    from podbench.tasks import LabelNoise, dataset_info, open_set_classes

    known = None
    if run.open_set is not None:
        num_classes = dataset_info(run.dataset).num_classes
        if num_classes is None:
            raise UserError(
                f"open_set: dataset '{run.dataset}' has no fixed number of classes; "
                "use a dataset with known classes."
            )
        known = open_set_classes(int(num_classes), run.open_set.known, run.open_set.seed)
    noise = None
    if run.label_noise is not None:
        seed = run.seed if run.label_noise.seed is None else run.label_noise.seed
        noise = LabelNoise(run.label_noise.kind, run.label_noise.rate, seed)
    return known, noise


def _load_task(
    run: RunSpec, policy: RunPolicy, known: tuple[int, ...] | None, noise: LabelNoise | None
) -> Task:
    """Each split once: the training split at limit_train, the evaluated ones at limit_eval."""
    from podbench.tasks import load_task

    return load_task(
        run.dataset,
        run.data_root,
        device=policy.device,
        val_fraction=run.val_fraction,
        split_seed=run.split_seed,
        image_size=run.image_size,
        use_val=run.eval_split == "val" or bool(run.evaluate),  # probes fit T on validation
        limit={"train": run.limit_train, "val": run.limit_eval, "test": run.limit_eval},
        known_classes=known,
        label_noise=noise,
        stream_bytes=stream_budget(run.gpus, policy.device),
        channels_last=policy.channels_last,
        # streamed data: DataLoader workers within the run's CPU share, not the machine's
        workers=min(8, int(run.cpus)),
        augmentation=run.augmentation,
    )


def latent_in_float32(model: nn.Module) -> None:
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


def _build_model(run: RunSpec, policy: RunPolicy, task: Task) -> tuple[nn.Module, Forward]:
    """The network on the run's device, its data-dependent initialisation done, and its forward."""
    from podbench.tasks import create_arch, prepare_model

    torch.manual_seed(run.seed)
    model = create_arch(
        run.arch,
        in_channels=task.info.channels,
        image_size=task.image_size,
        feat_dim=run.feat_dim,
        proj=run.proj,
    )
    if run.amp != "off":  # before compiling: the compiled graph keeps the float32 projection
        latent_in_float32(model)
    # prepare_model moves and converts the model in place and returns what runs it
    forward = prepare_model(
        model,
        policy.device,
        channels_last=policy.channels_last,
        compile=run.compile,
        compile_threads=run.cpus,
    )
    samples = int(getattr(model, "init_samples", 0))
    if samples:  # a backbone's data-dependent initialisation, from the first training images
        # (unaugmented, in their stored order: airbench's whitening takes the first 5,000)
        images, _ = next(iter(task.eval_batches("train", samples)))
        model.init_from_data(images)  # type: ignore[operator]
    return model, forward


def _build_optimizer(run: RunSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    # fp16: a fused optimiser skips a step with inf gradients on the device; otherwise the
    # loss scaler reads its inf check back on every update
    fused = True if run.amp == "fp16" else None
    if run.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=run.lr,
            momentum=run.momentum,
            weight_decay=run.weight_decay,
            nesterov=run.nesterov,
            fused=fused,
        )
    return torch.optim.AdamW(groups, lr=run.lr, weight_decay=run.weight_decay, fused=fused)


def _build_scheduler(
    run: RunSpec, optimizer: torch.optim.Optimizer, total_updates: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The run's schedule; ``total_updates``: optimiser updates of the whole run (one-cycle,
    triangular)."""
    schedulers = torch.optim.lr_scheduler
    if run.schedule == "multistep":
        return schedulers.MultiStepLR(optimizer, milestones=list(run.milestones), gamma=run.gamma)
    if run.schedule == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=run.epochs)
    share = schedule_warmup(run.schedule, run.warmup)  # None: a schedule without a warm-up
    if run.schedule == "onecycle" and share is not None:
        return schedulers.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=max(1, total_updates),
            pct_start=share,
        )
    if run.schedule == "triangular" and share is not None:  # airbench94's: no momentum cycle
        return schedulers.LambdaLR(
            optimizer, functools.partial(triangular, total=max(1, total_updates), warmup=share)
        )
    return None


def warm_up_shapes(run: RunSpec, task: Task) -> list[tuple[bool, tuple[int, ...]]]:
    """(training, input shape) of every batch shape the run will see."""
    size, channels, bs = task.image_size, task.info.channels, run.batch_size
    train = {min(bs, task.num_train), 0 if run.drop_last else task.num_train % bs}
    evaluated = task.num_samples(run.eval_split)
    evals = {min(bs, evaluated), evaluated % bs}
    return [
        (mode, (n, channels, size, size))
        for mode, sizes in ((True, train), (False, evals))
        for n in sorted(sizes)
        if n > 0
    ]


def build_parts(run: RunSpec, policy: RunPolicy) -> RunParts:
    """Build the run's parts on ``policy.device``; a compiled model is compiled here, so that
    compile time is not training time (images/s)."""
    from podbench.losses import create_loss
    from podbench.spec_files import import_plugins

    import_plugins(run.imports)  # plugins registered by modules the suite names
    known, noise = _data_conditions(run)
    task = _load_task(run, policy, known, noise)
    model, forward = _build_model(run, policy, task)
    torch.manual_seed(run.seed)  # centroids do not depend on the architecture's draws
    plugin = create_loss(
        run.loss,
        num_classes=len(task.classes),
        feat_dim=run.feat_dim,
        variant=run.variant,
        **run.loss_params,
    ).to(policy.device)
    # one group, or the plugin's parameters apart at their own learning rate (proxies)
    groups = plugin.param_groups(list(model.parameters()), run.lr)
    optimizer = _build_optimizer(run, groups)
    updates = int(getattr(plugin, "updates_per_batch", 1))
    n = task.num_train
    batches = n // run.batch_size if run.drop_last else math.ceil(n / run.batch_size)
    steps = min(batches, run.max_steps) if run.max_steps else batches
    evaluation: dict[str, dict[str, float | None]] = {}
    if noise is not None:  # the noise the training labels carry, nominal and realised
        evaluation["label-noise"] = {"rate": noise.rate, "changed": task.label_noise_rate}
    if run.compile:
        _compile(run, policy, task, model, forward)
    return RunParts(
        run=run,
        task=task,
        model=model,
        forward=forward,
        plugin=plugin,
        params=[p for group in groups for p in group["params"]],
        optimizer=optimizer,
        scheduler=_build_scheduler(run, optimizer, run.epochs * steps * updates),
        scaler=torch.amp.GradScaler(policy.device.type, enabled=run.amp == "fp16"),
        steps_per_epoch=steps,
        updates=updates,
        evaluation=evaluation,
        lookahead=Lookahead.of(model, plugin) if run.lookahead else None,
    )


def _compile(
    run: RunSpec, policy: RunPolicy, task: Task, model: nn.Module, forward: Forward
) -> None:
    """Compile every graph the run will need: each batch shape, and the last epoch's state of a
    network whose epoch hook changes what trains (fastnet freezes its whitening bias)."""
    layout = torch.channels_last if policy.channels_last else None
    shapes = warm_up_shapes(run, task)
    warm_up(model, forward, shapes, policy.autocast, memory_format=layout)
    hook = getattr(model, "on_epoch_start", None)
    if callable(hook) and run.epochs > 1:
        hook(run.epochs - 1)
        warm_up(model, forward, [s for s in shapes if s[0]], policy.autocast, memory_format=layout)
        hook(0)
