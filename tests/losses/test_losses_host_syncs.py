"""The host-sync counter of the kit, and POD's Gram matrix on each device's path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from podbench.losses import create_loss
from podbench.losses.pod import _symmetric_gram, gram_blocks
from podbench.losses.testing import count_host_syncs


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("_local_scalar_dense", lambda x, y: x.sum().item()),
        ("_local_scalar_dense", lambda x, y: float(x.sum())),
        ("_local_scalar_dense", lambda x, y: bool((x > 0).any())),
        ("bincount", lambda x, y: torch.bincount(y, minlength=4)),
        ("nonzero", lambda x, y: torch.nonzero(x > 0)),
        ("index with a boolean mask", lambda x, y: x[x > 0]),
        (
            "index_put_ with a boolean mask",
            lambda x, y: x.clone().index_put_((x > 0,), x.new_zeros(())),
        ),
        ("_unique2", lambda x, y: torch.unique(y)),
        ("repeat_interleave without output_size", lambda x, y: torch.repeat_interleave(y)),
        ("Tensor.cpu", lambda x, y: x.cpu()),
        ("Tensor.tolist", lambda x, y: y.tolist()),
        ("Tensor.numpy", lambda x, y: x.numpy()),
        ("Tensor.__array__", lambda x, y: np.asarray(x)),
        ("Tensor.to", lambda x, y: x.to("cpu")),
    ],
)
def test_counter_sees_each_kind_of_sync(what: str, call) -> None:
    x, y = torch.randn(6), torch.tensor([0, 1, 1, 3])
    with count_host_syncs() as syncs:
        call(x, y)
    assert syncs.count >= 1 and syncs.calls[0].startswith(what), syncs.calls
    assert __file__ in syncs.calls[0]  # it names the line that asked


def test_counter_ignores_device_side_work_and_restores_tensor_methods() -> None:
    x, y = torch.randn(8, 3, requires_grad=True), torch.tensor([0, 1, 2, 1, 0, 2, 1, 0])
    cpu_method = torch.Tensor.cpu
    with count_host_syncs() as syncs:
        loss = torch.nn.functional.cross_entropy(x, y) + x.square().sum()
        loss.backward()
        x.detach().to(torch.float64)  # a dtype change stays on the device
        x.detach().to("cpu", non_blocking=True)  # queued, not waited for
        torch.zeros(4).index_add_(0, y, torch.ones(8))  # counts without bincount
        torch.isfinite(loss).all()  # a flag kept on the device
    assert syncs.count == 0, syncs.calls
    assert torch.Tensor.cpu is cpu_method


def test_center_loss_counts_classes_without_bincount() -> None:
    # the centre update by hand: c_j -= alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)
    torch.manual_seed(0)
    loss = create_loss("center", num_classes=3, feat_dim=2, alpha=0.5)
    loss.check_values = False
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 2, 0, 0])
    before = loss.centers.clone()
    with count_host_syncs() as syncs:
        loss(x, y)
    assert syncs.count == 0, syncs.calls
    expected = before.clone()
    expected[0] -= 0.5 * ((before[0] - x[0]) + (before[0] - x[2]) + (before[0] - x[3])) / 4
    expected[2] -= 0.5 * (before[2] - x[1]) / 2
    assert torch.allclose(loss.centers, expected, atol=1e-6)


def test_value_checks_off_keeps_shape_checks() -> None:
    from podbench.errors import UserError

    loss = create_loss("softmax", num_classes=3, feat_dim=4)
    with pytest.raises(UserError, match="targets range over"):
        loss(torch.randn(2, 4), torch.tensor([0, 7]))
    loss.check_values = False
    with count_host_syncs() as syncs, pytest.raises(UserError, match="features have shape"):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))
    assert syncs.count == 0, syncs.calls


def test_pod_gram_is_blocked_on_the_cpu_only() -> None:
    assert gram_blocks(512, "cpu") == 4 and gram_blocks(100, "cpu") == 1
    assert gram_blocks(512, "cuda") == 1 and gram_blocks(512, "mps") == 1


@pytest.mark.parametrize("rows", [130, 256, 301])
def test_pod_gram_blocked_equals_one_matmul(rows: int) -> None:
    m = torch.randn(rows, 40, generator=torch.Generator().manual_seed(rows), dtype=torch.float64)
    reference = m.numpy() @ m.numpy().T  # an independent product
    for blocks in (1, 2, 4):
        gram, frob_sq = _symmetric_gram(m, blocks)
        np.testing.assert_allclose(gram.numpy(), reference, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(float(frob_sq), float((reference**2).sum()), rtol=1e-12)
