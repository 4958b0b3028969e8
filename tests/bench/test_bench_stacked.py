"""N seeds stacked with torch.func and vmap train exactly as N separate runs (on the CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from podbench.losses import create_loss
from podbench.recipe import Lookahead
from podbench.stacked import StackedNets
from podbench.tasks.archs import LatentNet
from podbench.tasks.fastnet import FastNet

N, B, STEPS = 3, 8, 5


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _copy(seed: int, loss: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    model = LatentNet(
        FastNet(3, widths=(4, 8, 8)), 8, 8, proj="linear" if loss == "pod" else "none"
    )
    params = {} if loss == "pod" else {"bias": False}
    plugin = create_loss(loss, num_classes=4, feat_dim=8, **params)
    return model, plugin


def _batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(100 + seed)  # each copy its own data
    return [
        (torch.randn(B, 3, 12, 12, generator=gen), torch.randint(0, 4, (B,), generator=gen))
        for _ in range(STEPS)
    ]


def _sgd(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.2, momentum=0.85, nesterov=True, weight_decay=5e-3)


@pytest.mark.parametrize("loss", ["label-smoothing", "pod"])
def test_stacked_seeds_equal_separate_runs(loss: str) -> None:
    separate = []
    for seed in range(N):
        model, plugin = _copy(seed, loss)
        opt = _sgd([*model.parameters(), *plugin.parameters()])
        look = Lookahead.of(model, plugin)
        for step, (x, y) in enumerate(_batches(seed), start=1):
            out = plugin(model(x), y).total
            opt.zero_grad()
            out.backward()
            opt.step()
            look.after_step(step, STEPS)
        separate.append((model, plugin))

    copies = [_copy(seed, loss) for seed in range(N)]
    stacked = StackedNets([m for m, _ in copies], [p for _, p in copies])
    opt = _sgd(stacked.parameters())
    # as Lookahead.of: the network's whole state, the loss's parameters (not its statistics)
    look = Lookahead(
        [
            *stacked.params.values(),
            *(b for k, b in stacked.buffers.items() if k.startswith("model.")),
        ]
    )
    data = [_batches(seed) for seed in range(N)]
    for step in range(STEPS):
        xs = torch.stack([data[i][step][0] for i in range(N)])
        ys = torch.stack([data[i][step][1] for i in range(N)])
        losses = stacked.losses(xs, ys)
        assert losses.shape == (N,)
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
        look.after_step(step + 1, STEPS)
    stacked.write_back()
    worst = 0.0
    for (ref_model, ref_plugin), (model, plugin) in zip(separate, copies, strict=True):
        for ref, got in zip(
            [*ref_model.state_dict().values(), *ref_plugin.state_dict().values()],
            [*model.state_dict().values(), *plugin.state_dict().values()],
            strict=True,
        ):
            if ref.is_floating_point():
                worst = max(worst, float((ref - got).abs().max()))
                # float32 rounding: vmap runs the convolutions grouped (another summation order)
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    print(f"stacked vs separate, {N} seeds x {STEPS} steps: max |difference| {worst:.2e}")
    # and the copies did move apart from their initial weights
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            copies[0][0].state_dict().values(), _copy(0, loss)[0].state_dict().values(), strict=True
        )
    )


def test_stacked_divergence_stays_in_its_copy_and_frozen_parameters_stay() -> None:
    copies = [_copy(seed, "label-smoothing") for seed in range(N)]
    for model, _ in copies:
        model.on_epoch_start(3)  # fastnet freezes its whitening bias
    stacked = StackedNets([m for m, _ in copies], [p for _, p in copies])
    assert not stacked.params["model.backbone.whiten.bias"].requires_grad
    frozen = stacked.params["model.backbone.whiten.bias"].clone()
    opt = _sgd([p for p in stacked.parameters() if p.requires_grad])
    xs = torch.randn(N, B, 3, 12, 12)
    xs[1, 0, 0, 0, 0] = float("nan")  # copy 1's batch poisons copy 1 only
    losses = stacked.losses(xs, torch.randint(0, 4, (N, B)))
    assert stacked.finite(losses).tolist() == [True, False, True]
    opt.zero_grad()
    losses.sum().backward()
    opt.step()
    finite = [all(bool(torch.isfinite(p[i]).all()) for p in stacked.parameters()) for i in range(N)]
    assert finite == [True, False, True]
    assert torch.equal(stacked.params["model.backbone.whiten.bias"], frozen)
    scores = stacked.scores(torch.randn(B, 3, 12, 12), shared=True)
    assert scores.shape == (N, B, 4)


def _suite_runs(loss: str, seeds: str = "[0, 1, 2]") -> list:
    from podbench.suite_spec import load_suite

    overrides = [
        "epochs=2",
        "batch_size=32",
        "lr=0.05",
        f"seeds={seeds}",
        "datasets=[synthetic]",
        "limit_train=96",
        "limit_eval=64",
        "device=cpu",
        "gpus=0",
        "cpus=1",
        "amp='off'",
        "channels_last=false",
    ]
    return [r for r in load_suite("fast-cifar10", overrides).expand() if r.label == loss]


@pytest.mark.parametrize("loss", ["label-smoothing", "pod"])
def test_train_stacked_records_equal_separate_train_runs(loss: str) -> None:
    from podbench.engine import train_run
    from podbench.stacked import train_stacked

    runs = _suite_runs(loss)
    assert len(runs) == N and len({r.seed for r in runs}) == N
    stacked = train_stacked(runs)
    separate = [train_run(run) for run in runs]
    for got, want in zip(stacked, separate, strict=True):
        assert got["status"] == want["status"] == "completed", got["error"]
        assert got["run_id"] == want["run_id"]
        for key in ("train_loss", "lr"):
            torch.testing.assert_close(
                torch.tensor([h[key] for h in got["history"]]),
                torch.tensor([h[key] for h in want["history"]]),
                rtol=1e-4,
                atol=1e-6,
            )
        # accuracies count predictions: equal unless a score sits on a float32 tie
        assert [h["test_acc"] for h in got["history"]] == [h["test_acc"] for h in want["history"]]
        assert got["geometry"].keys() == want["geometry"].keys()
    # the seeds trained apart: not one loss curve three times
    assert len({tuple(h["train_loss"] for h in r["history"]) for r in stacked}) == N


def test_train_stacked_refuses_runs_that_differ_in_more_than_the_seed() -> None:
    from podbench.errors import UserError
    from podbench.stacked import train_stacked

    runs = _suite_runs("softmax", "[0, 1]")
    other = runs[1].model_copy(update={"lr": 0.1})
    with pytest.raises(UserError, match="differ in their seed only"):
        train_stacked([runs[0], other])
