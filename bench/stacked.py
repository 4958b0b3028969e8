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
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackedNets"]


class _Pair(nn.Module):
    """A network and its loss plugin as one module: ``forward(x, y)`` is the training loss."""

    def __init__(self, model: nn.Module, plugin: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.plugin = plugin

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.plugin(self.model(x), y).total

    def scores(self, x: Tensor) -> Tensor:
        return self.plugin.predict(self.model(x))


class StackedNets:
    """N (network, loss plugin) copies of one architecture, trained with one vmapped step.

    Args:
        models: the N networks (the same architecture, their own initial weights).
        plugins: the N loss plugins (the same loss and settings; their heads their own).
    """

    def __init__(self, models: Sequence[nn.Module], plugins: Sequence[nn.Module]) -> None:
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

    def _call(self, method: str, params: dict[str, Tensor], buffers: dict[str, Tensor],
              *args: Tensor) -> Tensor:
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
        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
                ) -> Tensor:
            return self._call("forward", params, buffers, x, y)

        # randomness "different": a copy's dropout draws differ from the others'
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
    def write_back(self) -> None:
        """Copy each copy's stacked weights and buffers into its own modules (for records,
        checkpoints and evaluation by the ordinary path)."""
        for i, pair in enumerate(self.pairs):
            for name, tensor in pair.named_parameters():
                tensor.copy_(self.params[name][i])
            for name, tensor in pair.named_buffers():
                tensor.copy_(self.buffers[name][i])

