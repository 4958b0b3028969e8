"""Conformance kit: the checks every loss plugin must pass, for plugin authors and our tests.

Each check takes a *factory* ``(num_classes, feat_dim) -> LossPlugin`` (or a registered name)
and raises ``AssertionError`` with a sentence saying what is wrong.

Example:
    >>> from podbench.losses.testing import run_conformance
    >>> run_conformance("softmax")  # raises AssertionError on the first failed check

Every check also takes ``device`` (``run_conformance("softmax", device="cuda")``): the plugin
and the kit's data are put there, so a plugin that makes tensors on the wrong device fails.

In a plugin package's tests::

    import pytest
    from podbench.losses.testing import CHECKS

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_my_loss(check):
        check("my-loss")
"""

from __future__ import annotations

import contextlib
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from podbench.errors import UserError
from podbench.losses.base import LossOutput, LossPlugin, NonFiniteFeaturesError
from podbench.losses.registry import create_loss

__all__ = [
    "CHECKS",
    "check_bad_inputs",
    "check_determinism",
    "check_edge_cases",
    "check_gradients",
    "check_output",
    "check_predict_agrees",
    "check_predict_is_pure",
    "check_state_dict_roundtrip",
    "check_no_host_sync",
    "count_host_syncs",
    "HostSyncs",
    "run_conformance",
    "train_steps",
]

Factory = Callable[[int, int], LossPlugin]
LossLike = str | Factory
Device = str | torch.device

K, D = 4, 8  # small enough for every loss (simplex needs D >= K - 1)


def _factory(loss: LossLike) -> Factory:
    if isinstance(loss, str):
        return lambda k, d: create_loss(loss, num_classes=k, feat_dim=d)
    return loss


def _make(
    loss: LossLike, seed: int = 0, k: int = K, d: int = D, device: Device = "cpu"
) -> LossPlugin:
    torch.manual_seed(seed)
    plugin = _factory(loss)(k, d)
    assert isinstance(plugin, LossPlugin), (
        f"the factory returned {type(plugin).__name__}, not a LossPlugin"
    )
    return plugin.to(device)


def _on(device: Device, *tensors: Tensor) -> tuple[Tensor, ...]:
    # the kit's data is drawn on the CPU (the same numbers on every device), then moved
    return tuple(t.to(device) for t in tensors)


def _name(plugin: LossPlugin) -> str:
    return plugin.loss_name or type(plugin).__name__


def _batch(
    seed: int, b: int = 16, k: int = K, d: int = D, device: Device = "cpu"
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=gen) * 3.0
    y = torch.arange(b) % k
    return _on(device, x, y)  # type: ignore[return-value]


def _all_updates(plugin: LossPlugin, x: Tensor, y: Tensor) -> list[LossOutput]:
    return [plugin.update_loss(x, y, step) for step in range(plugin.updates_per_batch)]


def check_output(loss: LossLike, device: Device = "cpu") -> None:
    """forward returns a LossOutput of finite scalars; predict returns (B, K) finite scores."""
    plugin = _make(loss, device=device)
    name = _name(plugin)
    x, y = _batch(1, device=device)
    for step, out in enumerate(_all_updates(plugin, x, y)):
        assert isinstance(out, LossOutput), f"{name}: update {step} returned {type(out).__name__}"
        assert out.total.dim() == 0, f"{name}: total has shape {tuple(out.total.shape)}, not ()"
        assert torch.isfinite(out.total), f"{name}: total of update {step} is {out.total}"
        for part, value in out.parts.items():
            assert isinstance(part, str) and isinstance(value, Tensor) and value.dim() == 0, (
                f"{name}: part {part!r} is not a named scalar tensor"
            )
            assert torch.isfinite(value), f"{name}: part {part!r} is {value}"
    scores = plugin.predict(x)
    assert tuple(scores.shape) == (x.shape[0], K), (
        f"{name}: predict gave shape {tuple(scores.shape)}, not {(x.shape[0], K)}"
    )
    assert bool(torch.isfinite(scores).all()), f"{name}: predict gave non-finite scores"
    assert plugin.updates_per_batch >= 1, f"{name}: updates_per_batch must be >= 1"
    cents = plugin.centroids_for_geometry()
    if cents is not None:
        assert tuple(cents.shape) == (K, D), f"{name}: centroids_for_geometry() is not (K, d)"
    classified = plugin.classified_features(x)
    assert tuple(classified.shape) == tuple(x.shape), (
        f"{name}: classified_features gave shape {tuple(classified.shape)}, not {tuple(x.shape)}"
    )
    assert bool(torch.isfinite(classified).all()), f"{name}: classified_features is not finite"


def check_gradients(loss: LossLike, device: Device = "cpu") -> None:
    """Every update sends a finite, non-zero gradient to the features; head parameters get one."""
    plugin = _make(loss, device=device)
    name = _name(plugin)
    x, y = _batch(2, device=device)
    for step in range(plugin.updates_per_batch):
        feats = x.clone().requires_grad_(True)
        out = plugin.update_loss(feats, y, step)
        out.total.backward()
        grad = feats.grad
        assert grad is not None, f"{name}: update {step} sends no gradient to the features"
        assert bool(torch.isfinite(grad).all()), f"{name}: update {step} gives non-finite gradients"
        assert float(grad.abs().sum()) > 0, f"{name}: update {step} gives a zero feature gradient"
    for pname, param in plugin.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{name}: parameter {pname} receives no gradient"
            assert bool(torch.isfinite(param.grad).all()), f"{name}: {pname} has non-finite grad"


def _separable(
    seed: int = 0, per_class: int = 24, p: int = 6, device: Device = "cpu"
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(K, p, generator=gen) * 3.0
    y = torch.arange(K).repeat_interleave(per_class)
    x = means[y] + 0.3 * torch.randn(len(y), p, generator=gen)
    x, y = _on(device, x, y)
    return x, y


def train_steps(
    plugin: LossPlugin,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 4,
    batch_size: int = 32,
    lr: float = 0.01,
    seed: int = 0,
) -> None:
    """Train model and plugin together the way the engine does (hooks, several updates)."""
    opt = torch.optim.Adam(plugin.param_groups(list(model.parameters()), lr), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    plugin.train()
    for epoch in range(epochs):
        plugin.on_epoch_start(epoch)
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size].to(y.device)
            for step in range(plugin.updates_per_batch):
                out = plugin.update_loss(model(x[idx]), y[idx], step)
                opt.zero_grad()
                out.total.backward()
                opt.step()
        plugin.on_epoch_end(epoch)


def check_predict_agrees(loss: LossLike, device: Device = "cpu") -> None:
    """On separable data, training the objective lowers it and predict then classifies right."""
    plugin = _make(loss, device=device)
    name = _name(plugin)
    x, y = _separable(device=device)
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], D).to(device)
    with torch.no_grad():
        plugin.eval()
        before = float(plugin(model(x), y).total)
    train_steps(plugin, model, x, y, epochs=12)
    model.eval()
    plugin.eval()
    with torch.no_grad():
        after = float(plugin(model(x), y).total)
        accuracy = float((plugin.predict(model(x)).argmax(dim=1) == y).float().mean())
    assert accuracy >= 0.95, f"{name}: after training, predict is right on {accuracy:.0%} only"
    assert after < before, f"{name}: training did not lower the loss ({before:.4g} -> {after:.4g})"


def _state(plugin: LossPlugin) -> dict[str, Tensor]:
    # every buffer and parameter, copied (state_dict holds views that later updates would change)
    return {key: value.detach().clone() for key, value in plugin.state_dict().items()}


def check_predict_is_pure(loss: LossLike, device: Device = "cpu") -> None:
    """predict, scores and classified_features change no buffer or parameter, in either mode.

    The engine measures training accuracy with ``predict`` on every training batch: a
    ``predict`` that moved state (BatchNorm running statistics, counters) would train twice.
    """
    for mode in ("train", "eval"):
        plugin = _make(loss, device=device)
        name = _name(plugin)
        x, y = _separable(device=device)
        torch.manual_seed(0)
        # state away from its start
        train_steps(plugin, nn.Linear(x.shape[1], D).to(device), x, y, epochs=1)
        plugin.train(mode == "train")
        feats, _ = _batch(8, device=device)
        before = _state(plugin)
        for call in ("predict", "scores", "classified_features"):
            for grad in (False, True):
                with torch.set_grad_enabled(grad):
                    getattr(plugin, call)(feats.clone().requires_grad_(grad))
                after = _state(plugin)
                assert after.keys() == before.keys(), (
                    f"{name} ({mode}): {call} adds or removes state entries"
                )
                for key, value in before.items():
                    assert torch.equal(after[key], value), (
                        f"{name} ({mode}): {call} changes {key}; it must not "
                        "touch the plugin's state (train-accuracy predictions would train it)"
                    )


def check_state_dict_roundtrip(loss: LossLike, device: Device = "cpu") -> None:
    """Loading a trained plugin's state_dict into a fresh one (other seed) reproduces it."""
    a = _make(loss, seed=0, device=device)
    name = _name(a)
    x, y = _separable(device=device)
    torch.manual_seed(0)
    train_steps(a, nn.Linear(x.shape[1], D).to(device), x, y, epochs=2)
    b = _make(loss, seed=1, device=device)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    feats, labels = _batch(3, device=device)
    with torch.no_grad():
        ta, tb = a(feats, labels).total, b(feats, labels).total
        pa, pb = a.predict(feats), b.predict(feats)
    assert torch.equal(ta, tb), f"{name}: loss differs after a state_dict round trip ({ta} vs {tb})"
    assert torch.equal(pa, pb), f"{name}: predict differs after a state_dict round trip"


def check_determinism(loss: LossLike, device: Device = "cpu") -> None:
    """The same seed gives the same plugin, loss values and gradients."""
    results = []
    for _ in range(2):
        plugin = _make(loss, seed=7, device=device)
        x, y = _batch(4, device=device)
        x.requires_grad_(True)
        totals = []
        for out in _all_updates(plugin, x, y):
            out.total.backward()
            totals.append(out.total.detach())
        assert x.grad is not None, f"{_name(plugin)}: no gradient reaches the features"
        results.append((torch.stack(totals), x.grad.clone()))
    name = _name(plugin)
    assert torch.equal(results[0][0], results[1][0]), f"{name}: the same seed gives other losses"
    assert torch.equal(results[0][1], results[1][1]), f"{name}: the same seed gives other gradients"


def _edge_batches(device: Device = "cpu") -> dict[str, tuple[Tensor, Tensor]]:
    x, _ = _batch(5, b=8)
    cases = {
        "one sample": (x[:1], torch.tensor([2])),
        "one class": (x, torch.full((8,), 1)),
        "one sample per class": (x[:K], torch.arange(K)),
        "a zero feature": (torch.cat([torch.zeros(1, D), x[:3]]), torch.tensor([0, 1, 2, 3])),
        "huge features": (x * 1e4, torch.arange(8) % K),
        "tiny features": (x * 1e-6, torch.arange(8) % K),
    }
    return {
        case: _on(device, feats, labels)  # type: ignore[misc]
        for case, (feats, labels) in cases.items()
    }


def check_edge_cases(loss: LossLike, device: Device = "cpu") -> None:
    """No NaN or Inf, in training and eval mode, on degenerate batches."""
    for mode in ("train", "eval"):
        plugin = _make(loss, device=device)
        name = _name(plugin)
        plugin.train(mode == "train")
        for case, (x, y) in _edge_batches(device).items():
            for step in range(plugin.updates_per_batch):
                feats = x.clone().requires_grad_(True)
                out = plugin.update_loss(feats, y, step)
                assert torch.isfinite(out.total), f"{name} ({mode}): {case} gives loss {out.total}"
                out.total.backward()
                assert feats.grad is not None, f"{name}: no gradient reaches the features"
                assert bool(torch.isfinite(feats.grad).all()), (
                    f"{name} ({mode}): {case} gives non-finite gradients"
                )
            with torch.no_grad():
                assert bool(torch.isfinite(plugin.predict(x)).all()), (
                    f"{name} ({mode}): {case} gives non-finite scores"
                )
            for pname, param in plugin.named_parameters():
                if param.grad is not None:
                    assert bool(torch.isfinite(param.grad).all()), (
                        f"{name} ({mode}): {case} gives {pname} a non-finite gradient"
                    )
                    param.grad = None


def check_bad_inputs(loss: LossLike, device: Device = "cpu") -> None:
    """Wrong shapes, labels out of range and non-finite features raise clear errors."""
    plugin = _make(loss, device=device)
    name = _name(plugin)
    x, y = _batch(6, b=6)
    bad: dict[str, tuple[object, object, type[Exception]]] = {
        "features of the wrong width": (torch.randn(6, D + 1), y, UserError),
        "3-D features": (torch.randn(6, D, 1), y, UserError),
        "1-D features": (torch.randn(D), y[:1], UserError),
        "an empty batch": (torch.randn(0, D), y[:0], UserError),
        "a label equal to K": (x, torch.tensor([0, 1, 2, 3, 0, K]), UserError),
        "a negative label": (x, torch.tensor([0, 1, 2, 3, 0, -1]), UserError),
        "one-hot targets": (x, torch.eye(K)[y % K], UserError),
        "float targets": (x, y.float(), UserError),
        "fewer targets than rows": (x, y[:5], UserError),
        "integer features": (x.long(), y, UserError),
        "a NaN feature": (
            x.clone().index_fill_(0, torch.tensor([2]), float("nan")),
            y,
            NonFiniteFeaturesError,
        ),
        "an Inf feature": (
            x.clone().index_fill_(0, torch.tensor([0]), math.inf),
            y,
            NonFiniteFeaturesError,
        ),
    }
    for case, (feats, targets, error) in bad.items():
        feats, targets = _on(device, feats, targets)  # type: ignore[arg-type]
        for step in range(plugin.updates_per_batch):
            try:
                plugin.update_loss(feats, targets, step)  # type: ignore[arg-type]
            except error as err:
                assert str(err).strip(), f"{name}: {case} raises an empty message"
            except Exception as err:  # noqa: BLE001  the kit reports what was raised instead
                raise AssertionError(
                    f"{name}: {case} raised {type(err).__name__}: {err}, not {error.__name__}"
                ) from err
            else:
                raise AssertionError(f"{name}: {case} raised no error (update {step})")
    try:
        plugin.predict(torch.randn(3, D + 2, device=device))
    except UserError:
        pass
    else:
        raise AssertionError(f"{name}: predict accepts features of the wrong width")


# -- host syncs -------------------------------------------------------------------------------

_aten = torch.ops.aten
# Ops whose CUDA kernels make the host wait for the device: a value read back (.item(), float(t),
# int(t), bool(t), `if t:`), or an output whose size depends on the data.
_SYNC_OPS = frozenset(
    {
        _aten._local_scalar_dense,
        _aten.is_nonzero,
        _aten.equal,
        _aten.allclose,
        _aten.nonzero,
        _aten.argwhere,
        _aten.masked_select,
        _aten.bincount,
        _aten._unique,
        _aten._unique2,
        _aten.unique_dim,
        _aten.unique_consecutive,
        _aten.unique_dim_consecutive,
    }
)
_MASK_INDEXING = frozenset({_aten.index, _aten.index_put, _aten.index_put_})  # x[mask], x[mask] = v


@dataclass
class HostSyncs:
    """The calls :func:`count_host_syncs` saw, each as ``"what at file:line"``."""

    calls: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.calls)

    def add(self, what: str) -> None:
        # the innermost frame outside torch and this module: where the code asked for the value
        where = "?"
        for frame in reversed(traceback.extract_stack()[:-1]):
            if "/torch/" not in frame.filename and frame.filename != __file__:
                where = f"{frame.filename}:{frame.lineno}"
                break
        self.calls.append(f"{what} at {where}")


class _SyncOps(TorchDispatchMode):
    def __init__(self, seen: HostSyncs) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _SYNC_OPS:
            self.seen.add(packet.__name__)
        elif packet in _MASK_INDEXING and any(
            isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ()
        ):
            self.seen.add(f"{packet.__name__} with a boolean mask")
        elif (
            packet is _aten.repeat_interleave
            and func is not _aten.repeat_interleave.self_int
            and kwargs.get("output_size") is None
        ):
            self.seen.add("repeat_interleave without output_size")
        elif (
            packet is _aten.copy_
            and args[0].device != args[1].device
            and not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        ):
            self.seen.add("blocking copy between devices")
        return func(*args, **kwargs)


def _moves_blocking(*args: Any, copy: bool = False, **kwargs: Any) -> bool:
    device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
    return device is not None and not non_blocking


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Count the calls that would make the host wait for a CUDA device, on any device.

    A GPU run is fast when the host queues work ahead of the device and never waits for it. The
    calls that make it wait are seen on the CPU as well: ops that read a value or whose output
    size depends on the data (seen by a dispatch mode), and explicit transfers: ``.cpu()``,
    ``.numpy()``, ``.tolist()``, ``__array__``, and ``.to(device)`` / ``.cuda()`` without
    ``non_blocking`` outside torch. A CPU run cannot tell a host tensor from a device one, so
    the count is an upper bound: every such call counts.

    Example:
        >>> with count_host_syncs() as syncs:
        ...     _ = float(torch.ones(2).sum())
        >>> syncs.count
        1
    """
    seen = HostSyncs()
    methods: dict[str, Callable[..., bool] | None] = {
        "cpu": None,
        "numpy": None,
        "tolist": None,
        "__array__": None,
        "to": _moves_blocking,
        "cuda": lambda *a, non_blocking=False, **k: not non_blocking,
    }
    originals = {name: getattr(Tensor, name) for name in methods}

    def counting(name: str, orig: Callable[..., Any], when: Callable[..., bool] | None) -> Any:
        def method(self: Tensor, *args: Any, **kwargs: Any) -> Any:
            # torch's own .to(device) calls are moves to where the tensor already is (its
            # reads of values reach the dispatch mode); only code outside torch is counted
            inside_torch = when is not None and "/torch/" in sys._getframe(1).f_code.co_filename
            if not inside_torch and (when is None or when(*args, **kwargs)):
                seen.add(f"Tensor.{name}")
            return orig(self, *args, **kwargs)

        return method

    try:
        for name, when in methods.items():
            setattr(Tensor, name, counting(name, originals[name], when))
        with _SyncOps(seen):
            yield seen
    finally:
        for name, orig in originals.items():
            setattr(Tensor, name, orig)


def check_no_host_sync(loss: LossLike, device: Device = "cpu") -> None:
    """With value checks off (as the engine runs after a run's first batch), an update, its
    backward pass and ``predict`` never make the host wait for the device.

    The engine keeps a GPU busy by reading nothing back per batch; a loss that reads a value
    (``.item()``, ``float(t)``, ``if t:``) or makes a data-dependent shape (``bincount``,
    boolean masks, ``nonzero``) stalls every update.
    """
    plugin = _make(loss, device=device)
    name = _name(plugin)
    plugin.check_values = False
    x, y = _batch(7, device=device)
    for mode in ("train", "eval"):
        plugin.train(mode == "train")
        for step in range(plugin.updates_per_batch):
            feats = x.clone().requires_grad_(True)
            with count_host_syncs() as syncs:
                plugin.update_loss(feats, y, step).total.backward()
                with torch.no_grad():
                    plugin.predict(feats.detach())
            assert syncs.count == 0, (
                f"{name} ({mode}): update {step} makes the host wait for the device "
                f"({'; '.join(syncs.calls)}); keep values on the device."
            )


CHECKS: tuple[Callable[..., None], ...] = (  # each: check(loss, device="cpu")
    check_output,
    check_gradients,
    check_predict_agrees,
    check_predict_is_pure,
    check_state_dict_roundtrip,
    check_determinism,
    check_edge_cases,
    check_bad_inputs,
    check_no_host_sync,
)


def run_conformance(loss: LossLike, device: Device = "cpu") -> None:
    """Run every check of the kit on a registered name or a factory ``(K, d) -> LossPlugin``.

    ``device``: where the plugin and the kit's data live ("cuda" checks a plugin on a GPU; the
    kit's numbers are drawn on the CPU and moved, so they are the same on every device).
    """
    for check in CHECKS:
        check(loss, device)
