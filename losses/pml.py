"""pytorch-metric-learning's losses by name: ``pml:<LossName>`` in any suite or tune file.

The losses are discovered from the installed library (``pytorch_metric_learning.losses``), not
from a hand-kept list, the first time a ``pml:`` name or the list of losses is asked for:

- a loss with learnable class weights and class logits (``get_logits``: ArcFace, CosFace,
  ProxyAnchor, SoftTriple, ...) becomes a plugin whose scores are those logits (similarities;
  distances are negated);
- every other loss that learns from labelled batches (pair- and tuple-based: contrastive,
  triplet, multi-similarity, supervised contrastive, ...) predicts the class of the nearest class
  mean of the training features, under the loss's own distance. The means are accumulated from
  the training batches the plugin sees during each epoch (a buffer, saved in checkpoints); the
  evaluation splits are never used. Those that accept mined tuples take a ``miner`` (a PML miner
  class name, with its defaults).

Constructor arguments with a plain default (number, bool, string, None) become hyperparameters
with PML's defaults, names and units (ArcFace's ``margin`` is in degrees, CosFace's is a cosine).
PML's plumbing (distance, reducer, regularisers, weight initialisation) keeps its defaults. A loss
is left out, with the reason in ``podbench losses``, when it wraps other losses, needs an argument
that has no default, or fails (an error, NaN or Inf) on one of the small batches a training run
meets: a labelled batch with unequal class counts, a second step on it, one sample per class, a
zero feature, one class, one sample.

Example:
    >>> from podbench.losses import create_loss
    >>> loss = create_loss("pml:ArcFaceLoss", num_classes=10, feat_dim=16)
    >>> float(loss.loss.margin)  # PML's own object; 28.6 degrees in radians
    0.49916...
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from podbench.errors import UserError
from podbench.losses.base import LossOutput, LossPlugin
from podbench.losses.registry import LossInfo, describe_loss
from podbench.registry import closest_name

__all__ = [
    "DISTRIBUTION",
    "PREFIX",
    "PmlClassifierLoss",
    "PmlLoss",
    "PmlMeanLoss",
    "discover",
    "left_out",
    "miner_names",
    "names",
    "resolve",
]

PREFIX = "pml"
DISTRIBUTION = "pytorch-metric-learning"
INSTALL = "pip install 'podbench[pml]'"
# Arguments every PML loss or miner has that are objects, not hyperparameters: they keep PML's
# defaults (the loss's own distance, reducer, no regulariser, its weight initialisation).
PLUMBING = frozenset(
    {
        "distance",
        "reducer",
        "collect_stats",
        "weight_init_func",
        "weight_regularizer",
        "weight_reg_weight",
        "embedding_regularizer",
        "embedding_reg_weight",
    }
)
EMBEDDING_DIM = ("embedding_size", "descriptors_dim")  # the feature dimension d, by PML's names
POSITIVE_ONLY = re.compile(r"temperature|lr_scale")  # zero is not a value of these
# Learning-rate multiplier of proxies (class weights PML calls `proxies`): the ProxyAnchor
# authors' setting (github.com/tjddus9597/Proxy-Anchor-CVPR2020, train.py: lr * 100), also the
# usual one of proxy losses; other class weights train at the network's rate.
PROXY_LR_SCALE = 100.0


@dataclass(frozen=True)
class Discovered:
    """One PML loss class as podbench sees it."""

    name: str
    cls: type
    kind: str  # "classifier" (class logits) or "mean" (nearest class mean)
    defaults: dict[str, Any]
    takes_classes: bool  # pass num_classes=K
    dim_arg: str | None  # the argument that takes d
    takes_miner: bool
    reference: str
    learnable: bool = True


_DISCOVERED: dict[str, Discovered] = {}
_LEFT_OUT: dict[str, str] = {}
_MINERS: dict[str, type] = {}
_CLASSES: dict[str, tuple[LossInfo, type[PmlLoss]]] = {}  # name -> its served info and class


def _import_pml() -> Any:
    try:
        import pytorch_metric_learning.losses as pml_losses
    except ImportError as err:
        raise UserError(
            f"loss names '{PREFIX}:...' need the {DISTRIBUTION} package ({err}); install it with "
            f"`{INSTALL}` (or `pip install {DISTRIBUTION}`)."
        ) from None
    return pml_losses


def _constructor_args(cls: type) -> tuple[dict[str, Any], list[str]]:
    """(arguments with defaults, arguments without) along the __init__s the MRO chains with **kwargs."""
    defaults: dict[str, Any] = {}
    required: list[str] = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        passes_on = False
        for param in list(inspect.signature(init).parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                passes_on = True
            elif param.name not in defaults and param.name not in required:
                if param.default is param.empty:
                    required.append(param.name)
                else:
                    defaults[param.name] = param.default
        if not passes_on:
            break
    return defaults, required


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _probe_batch(num_classes: int, feat_dim: int) -> tuple[Tensor, Tensor]:
    """A labelled batch with an unequal number of samples per class (as real batches have)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([c for c in range(min(num_classes, 8)) for _ in range(2)] + [0])
    return torch.randn(len(labels), feat_dim, generator=gen), labels


def _probe(
    loss: nn.Module,
    num_classes: int,
    feat_dim: int,
    indices: Any = None,
    miner: nn.Module | None = None,
) -> Tensor:
    """The loss of a small labelled batch (tuples from ``indices`` or ``miner``), without
    touching the global random state."""
    x, y = _probe_batch(num_classes, feat_dim)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        return loss(x, y, miner(x, y) if miner is not None else indices)


def _degenerate_batches(num_classes: int, feat_dim: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Batches a training run meets now and then; a usable loss stays finite on each."""
    x, y = _probe_batch(num_classes, feat_dim)
    per_class = torch.arange(num_classes)
    zero = x.clone()
    zero[0] = 0.0
    return {
        "a labelled batch": (x, y),
        "a second step on it (state kept between steps)": (x, y),
        "a batch with one sample per class": (x[:num_classes], per_class),
        "a batch with a zero feature": (zero, y),
        "a batch of one class": (x, torch.zeros_like(y)),
        "a batch of one sample": (x[:1], y[:1]),
    }


def _numerical_problem(loss: nn.Module, num_classes: int, feat_dim: int) -> str | None:
    """Why training steps on degenerate batches fail (error, NaN or Inf), or None."""
    with torch.random.fork_rng(devices=[]):
        for case, (x, y) in _degenerate_batches(num_classes, feat_dim).items():
            feats = x.clone().requires_grad_(True)
            try:
                value = loss(feats, y)
                if not (isinstance(value, Tensor) and value.dim() == 0):
                    return f"gives no scalar loss on {case}"
                if value.requires_grad:
                    value.backward()
            except Exception as err:  # noqa: BLE001  the reason it is left out
                first = (str(err).strip().splitlines() or [""])[0].split(" (")[0]
                return f"fails on {case} ({type(err).__name__}{': ' + first if first else ''})"
            grads = [g for g in [feats.grad, *(p.grad for p in loss.parameters())] if g is not None]
            if not bool(torch.isfinite(value)):
                return f"gives loss {float(value.detach())} on {case}"
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                return f"gives non-finite gradients on {case}"
            loss.zero_grad(set_to_none=True)
    return None


def _triplets(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every (anchor, positive, negative) of a batch, as a miner returns them."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool)
    a, p, n = torch.nonzero(positive[:, :, None] & ~same[:, None, :], as_tuple=True)
    return a, p, n


def _reference(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""  # not inherited: a subclass's paper is its own
    url = re.search(r"https?://\S+", doc)
    where = f"pytorch-metric-learning losses.{cls.__name__}"
    return f"{url.group(0).rstrip('.,)')} ({where})" if url else where


def _built(cls: type[nn.Module], args: dict[str, Any]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # building draws no number the run would see
        return cls(**args)


def _passable(
    cls: type[nn.Module], dims: dict[str, Any], hparams: dict[str, Any]
) -> dict[str, Any]:
    """The hyperparameters a caller may pass: an argument of a base class that the subclass
    sets itself (``super().__init__(margin=0.1, **kwargs)``) cannot be passed again, so it is
    not one; each such argument is tried on its own."""
    own = set(inspect.signature(cls.__init__).parameters)
    kept = {}
    for key, value in hparams.items():
        if key not in own:
            try:
                _built(cls, {**dims, key: value})
            except TypeError:
                continue
            except Exception:  # noqa: BLE001  left to the build with every hyperparameter
                pass
        kept[key] = value
    return kept


def _takes_miner(loss: nn.Module, k: int, d: int) -> bool:
    """Whether a pair or tuple loss accepts mined tuples."""
    try:
        _probe(loss, k, d, _triplets(_probe_batch(k, d)[1]))
    except Exception:  # noqa: BLE001  the loss refuses mined tuples
        return False
    return True


def _discover_one(name: str, cls: type[nn.Module], base: type) -> Discovered | str:
    """The class as a plugin description, or the reason it is left out."""
    if not issubclass(cls, base):
        return "wraps other losses (not a loss of labelled features by itself)"
    if cls is base:
        return "compute_loss is abstract"
    defaults, required = _constructor_args(cls)
    dim_arg = next((a for a in EMBEDDING_DIM if a in required or a in defaults), None)
    takes_classes = "num_classes" in required or "num_classes" in defaults
    k, d = 4, 8
    dims: dict[str, Any] = {"num_classes": k} if takes_classes else {}
    if dim_arg:
        dims[dim_arg] = d
    try:  # with its defaults alone: a base's argument without one may be the subclass's to set
        _built(cls, dims)
    except TypeError as err:
        missing = [a for a in required if a not in dims]
        if not missing:
            return f"cannot be built with its defaults (TypeError: {err})"
        verb = "has" if len(missing) == 1 else "have"
        return f"needs {', '.join(missing)}, which {verb} no default"
    except Exception as err:  # noqa: BLE001  the reason it is left out
        return f"cannot be built with its defaults ({type(err).__name__}: {err})"
    hparams = _passable(
        cls,
        dims,
        {
            k: v
            for k, v in defaults.items()
            if k not in PLUMBING and k not in (*EMBEDDING_DIM, "num_classes") and _is_plain(v)
        },
    )
    try:  # every hyperparameter passed explicitly, as a suite may
        loss = _built(cls, {**dims, **hparams})
    except Exception as err:  # noqa: BLE001  the reason it is left out
        return f"cannot be built with its defaults ({type(err).__name__}: {err})"
    problem = _numerical_problem(loss, k, d)
    if problem:
        return problem
    classifier = (
        takes_classes and dim_arg is not None and callable(getattr(cls, "get_logits", None))
    )
    takes_miner = not classifier and _takes_miner(loss, k, d)
    if takes_miner:
        hparams["miner"] = None
    names = [n for n, _ in loss.named_parameters()]
    if names:  # proxies learn at 100x the network's rate in the ProxyAnchor authors' code
        hparams["head_lr_scale"] = (
            PROXY_LR_SCALE if any(n.endswith("proxies") for n in names) else 1.0
        )
    return Discovered(
        name=name,
        cls=cls,
        kind="classifier" if classifier else "mean",
        defaults=hparams,
        takes_classes=takes_classes,
        dim_arg=dim_arg,
        takes_miner=takes_miner,
        reference=_reference(cls),
        learnable=any(True for _ in loss.parameters()),
    )


def _discover_miners() -> dict[str, type]:
    import pytorch_metric_learning.miners as pml_miners

    miners = {}
    for name, cls in sorted(vars(pml_miners).items()):
        if (
            not (inspect.isclass(cls) and issubclass(cls, pml_miners.BaseMiner))
            or cls is pml_miners.BaseMiner
        ):
            continue
        _, required = _constructor_args(cls)
        if not required:  # a miner that needs a loss or settings without defaults is left out
            miners[name] = cls
    return miners


def discover() -> dict[str, Discovered]:
    """Every usable PML loss by class name (imports PML; raises UserError when it is missing)."""
    if _DISCOVERED or _LEFT_OUT:
        return dict(_DISCOVERED)
    pml_losses = _import_pml()
    base = pml_losses.BaseMetricLossFunction
    classes = {
        name: cls
        for name, cls in sorted(vars(pml_losses).items())
        if inspect.isclass(cls) and issubclass(cls, nn.Module)
    }  # not mixins, helpers
    with warnings.catch_warnings():  # the probes' batches are not the user's concern
        warnings.simplefilter("ignore")
        for name, cls in classes.items():
            found = _discover_one(name, cls, base)
            if isinstance(found, str):
                bases = any(
                    other is not cls and issubclass(other, cls) for other in classes.values()
                )
                unbuildable = not found.startswith(("gives", "fails"))
                _LEFT_OUT[name] = (
                    f"a base class of other losses: {found}" if bases and unbuildable else found
                )
            else:
                _DISCOVERED[name] = found
    _MINERS.update(_discover_miners())
    return dict(_DISCOVERED)


def left_out() -> dict[str, str]:
    """PML loss classes that are not offered, with the reason (empty when PML is missing)."""
    try:
        discover()
    except UserError:
        return {}
    return dict(_LEFT_OUT)


def miner_names() -> list[str]:
    """The PML miners a pair or tuple loss can take (by class name)."""
    discover()
    return sorted(_MINERS)


def _check_value(owner: str, name: str, value: Any, default: Any) -> Any:
    """A hyperparameter value of the default's kind (numbers of its sign), else a UserError."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):
        ok = number and math.isfinite(value)
        want = "a finite number"
        if ok and default >= 0:
            strict = POSITIVE_ONLY.search(name) is not None
            ok = value > 0 if strict else value >= 0
            want = "a finite number > 0" if strict else "a finite number >= 0"
    elif isinstance(default, str):  # e.g. triplets_per_anchor: "all" or a count
        ok = isinstance(value, str) or (number and float(value).is_integer())
        want = "a string or an integer"
    else:  # None: PML computes the value unless one is given
        ok = value is None or (number and math.isfinite(value))
        want = "null or a finite number"
    if not ok:
        raise UserError(f"{owner}: {name}={value!r} is invalid; give {want} (default {default!r}).")
    if number:  # plain Python numbers for PML (Optuna and YAML may give numpy scalars)
        integral = isinstance(value, numbers.Integral) or isinstance(default, str)
        return int(value) if integral else float(value)
    return value


class PmlLoss(LossPlugin):
    """A PML loss as a plugin: ``self.loss`` is the library's own module, trained as it is.

    Subclasses made by :func:`resolve` set :attr:`pml` (the discovered class).
    """

    pml: ClassVar[Discovered]

    def __init__(self, num_classes: int, feat_dim: int, **hparams: Any) -> None:
        super().__init__(num_classes, feat_dim)
        spec = self.pml
        owner = f"{PREFIX}:{spec.name}"
        params = {**spec.defaults}
        for key, value in hparams.items():
            if key not in spec.defaults:
                raise UserError(
                    f"{owner} has no hyperparameter {key!r}; it takes: "
                    f"{', '.join(sorted(spec.defaults)) or '(none)'}."
                )
            # the miner is a name, checked against PML's miners below
            params[key] = (
                value if key == "miner" else _check_value(owner, key, value, spec.defaults[key])
            )
        self.hparams = dict(params)  # every value, shown in repr
        miner = params.pop("miner", None)
        self.head_lr_scale = float(params.pop("head_lr_scale", 1.0))
        self.miner: nn.Module | None = None
        if miner is not None:
            if miner not in _MINERS:
                raise UserError(
                    f"{owner}: miner={miner!r} is not a PML miner; use one of "
                    f"{', '.join(sorted(_MINERS))} or null."
                )
            self.miner = _MINERS[miner]()
        kwargs = dict(params)
        if spec.takes_classes:
            kwargs["num_classes"] = num_classes
        if spec.dim_arg:
            kwargs[spec.dim_arg] = feat_dim
        try:
            self.loss = spec.cls(**kwargs)
            probe = _probe(self.loss, num_classes, feat_dim, miner=self.miner)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001  PML's own check of a value, as one sentence
            raise UserError(
                f"{owner}: PML rejects the hyperparameters {params} ({type(err).__name__}: "
                f"{str(err).strip() or 'no message'}); check them against PML's documentation."
            ) from None
        if not bool(torch.isfinite(probe)):
            raise UserError(
                f"{owner}: the hyperparameters {params} give a non-finite loss on a test batch; "
                "change them."
            )

    def loss_terms(self, features: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """PML's loss of the batch by sub-loss (ProxyAnchor: pos_loss, neg_loss); they sum to it.

        The same steps as PML's ``forward``, with each sub-loss reduced on its own (PML sums the
        reduced sub-losses); a loss with its own ``forward`` gives its total as ``loss``.
        """
        from pytorch_metric_learning.losses import BaseMetricLossFunction
        from pytorch_metric_learning.reducers import MultipleReducers

        loss = self.loss
        indices = self.miner(features, targets) if self.miner is not None else None
        reducer = loss.reducer
        own_forward = type(loss).forward is not BaseMetricLossFunction.forward
        summed = isinstance(reducer, MultipleReducers) and (
            type(reducer).sub_loss_reduction is MultipleReducers.sub_loss_reduction
        )
        if own_forward or not summed:
            return {"loss": loss(features, targets, indices)}
        loss.reset_stats()
        terms = loss.compute_loss(features, targets, indices, features, targets)
        loss.add_embedding_regularization_to_loss_dict(terms, features)
        parts = {}
        for name, info in terms.items():
            sub = reducer.reducers[name] if name in reducer.reducers else reducer.default_reducer
            parts[name] = sub({name: info}, features, targets)
        return parts

    def classified_features(self, features: Tensor) -> Tensor:
        # the loss measures unit-normalised features unless its distance says otherwise
        return self.loss.distance.maybe_normalize(features)

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        parts = self.loss_terms(features, targets)
        total = torch.stack(list(parts.values())).sum()
        return LossOutput(total=total, parts=parts if len(parts) > 1 else {})

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {', '.join(f'{k}={v!r}' for k, v in self.hparams.items())}"


class PmlClassifierLoss(PmlLoss):
    """A PML loss with class weights: the scores are its class logits (``get_logits``)."""

    def scores(self, features: Tensor) -> Tensor:
        logits = self.loss.get_logits(features)
        # similarities (cosine, dot product) are scores as they are; distances are negated
        return logits if self.loss.distance.is_inverted else -logits

    def centroids_for_geometry(self) -> Tensor | None:
        k, d = self.num_classes, self.feat_dim
        for name, param in self.loss.named_parameters():
            # PML keeps proxies as (K, d) and class weights W as (d, K)
            if tuple(param.shape) == (k, d) and (name.endswith("proxies") or k != d):
                return param.detach()
            if tuple(param.shape) == (d, k):
                return param.detach().T
        return None  # several centres per class (SoftTriple, sub-centres): no single weight


class PmlMeanLoss(PmlLoss):
    """A PML pair/tuple loss: predicts the class of the nearest class mean of training features.

    The means are taken in the space the loss measures in (unit-normalised when its distance
    normalises): sums over the training batches of an epoch become the means at its end; until
    the first epoch ends, the running means of the batches so far are used.
    """

    feature_sum: Tensor
    feature_count: Tensor
    class_means: Tensor
    has_mean: Tensor

    def __init__(self, num_classes: int, feat_dim: int, **hparams: Any) -> None:
        super().__init__(num_classes, feat_dim, **hparams)
        self.register_buffer("feature_sum", torch.zeros(num_classes, feat_dim))
        self.register_buffer("feature_count", torch.zeros(num_classes))
        self.register_buffer("class_means", torch.zeros(num_classes, feat_dim))
        self.register_buffer("has_mean", torch.zeros(num_classes, dtype=torch.bool))

    def _embed(self, features: Tensor) -> Tensor:
        return self.loss.distance.maybe_normalize(features)

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        if self.training:  # only training batches: the evaluation splits are never used
            with torch.no_grad():
                self.feature_sum.index_add_(0, targets, self._embed(features.detach()))
                self.feature_count.index_add_(
                    0, targets, torch.ones_like(targets, dtype=torch.float32)
                )
        return super().compute_loss(features, targets)

    def on_epoch_start(self, epoch: int) -> None:
        self.feature_sum.zero_()
        self.feature_count.zero_()

    def on_epoch_end(self, epoch: int) -> None:
        seen = self.feature_count > 0
        self.class_means[seen] = self.feature_sum[seen] / self.feature_count[seen, None]
        self.has_mean |= seen

    def _means(self) -> tuple[Tensor, Tensor]:
        """(K, d) class means and which classes have one; selected on the device (no sync)."""
        after_an_epoch = self.has_mean.any()
        # within the first epoch: the running means of the batches so far
        running = self.feature_sum / self.feature_count.clamp_min(1)[:, None]
        means = torch.where(after_an_epoch, self.class_means, running)
        known = torch.where(after_an_epoch, self.has_mean, self.feature_count > 0)
        return means, known

    def scores(self, features: Tensor) -> Tensor:
        means, known = self._means()
        distance = self.loss.distance
        # a class without a mean (never seen) has a zero vector, whose cosine is NaN: it is scored
        # below every known class instead (the row's lowest known score minus 1)
        safe = torch.where(known[:, None], means, torch.ones_like(means))
        sims = distance(features, safe)
        sims = sims if distance.is_inverted else -sims
        lowest = torch.where(known[None, :], sims, torch.full_like(sims, math.inf))
        floor = lowest.amin(dim=1, keepdim=True) - 1.0
        scores = torch.where(known[None, :], sims, floor)
        # before the first training batch no class has a mean: every score is 0
        return torch.where(known.any(), scores, torch.zeros_like(scores))

    def centroids_for_geometry(self) -> Tensor | None:
        means, known = self._means()
        return means if bool(known.all()) else None


def _plugin_class(spec: Discovered) -> type[PmlLoss]:
    base = PmlClassifierLoss if spec.kind == "classifier" else PmlMeanLoss

    def __init__(self: Any, num_classes: int, feat_dim: int, **hparams: Any) -> None:
        base.__init__(self, num_classes, feat_dim, **hparams)

    # the signature the registry reads: the hyperparameters as keyword arguments with defaults
    keyword = inspect.Parameter.KEYWORD_ONLY
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", positional),
            inspect.Parameter("num_classes", positional),
            inspect.Parameter("feat_dim", positional),
        ]
        + [inspect.Parameter(k, keyword, default=v) for k, v in spec.defaults.items()]
    )
    qualname = f"Pml{spec.name}"
    cls = type(
        qualname,
        (base,),
        {
            "__init__": __init__,
            "pml": spec,
            "__module__": __name__,
            "__qualname__": qualname,
            "__doc__": f"pytorch-metric-learning's {spec.name} as a podbench loss ({base.__name__}).",
        },
    )
    setattr(sys.modules[__name__], qualname, cls)  # picklable by reference, like any class
    return cls


def _description(spec: Discovered) -> str:
    if spec.kind == "classifier":
        return f"pytorch-metric-learning {spec.name}; scores: its class logits"
    miner = ", takes a miner" if spec.takes_miner else ""
    return (
        f"pytorch-metric-learning {spec.name} (pair/tuple loss{miner}); predicts the nearest "
        "class mean of the training features"
    )


def names() -> list[str]:
    """The class names of the usable PML losses (UserError when PML is missing)."""
    return sorted(discover())


def resolve(name: str) -> tuple[LossInfo, type[PmlLoss]]:
    """The :class:`LossInfo` and plugin class of ``pml:<name>`` (UserError: PML missing, or no
    such usable loss, naming the closest one or why the library's class is left out)."""
    found = discover()
    if name not in found:
        why = _LEFT_OUT.get(name)
        if why is not None:
            raise UserError(f"loss '{PREFIX}:{name}' is left out: {why}; see `podbench losses`.")
        near = closest_name(name, list(found))
        hint = f" (did you mean '{PREFIX}:{near}'?)" if near else ""
        raise UserError(
            f"unknown loss '{PREFIX}:{name}'{hint}; the {PREFIX}: losses are: "
            f"{', '.join(f'{PREFIX}:{n}' for n in sorted(found))} (see `podbench losses`)."
        )
    if name not in _CLASSES:
        import pytorch_metric_learning

        spec = found[name]
        cls = _plugin_class(spec)
        info = describe_loss(
            cls,
            f"{PREFIX}:{name}",
            description=_description(spec),
            reference=spec.reference,
            learnable_head=spec.learnable,
            source=f"{DISTRIBUTION} {pytorch_metric_learning.__version__}",
        )
        cls.loss_name = info.name
        _CLASSES[name] = (info, cls)
    return _CLASSES[name]
