"""FlatAdam against torch.optim.Adam and torch's gradient-norm clipping."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clippo.training.optim import FlatAdam


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def loss_of(model, step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 5, generator=g)
    y = torch.randn(16, 3, generator=g)
    return ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [None, 0.05])
def test_flat_adam_matches_torch_adam(max_norm, fused):
    """Both step implementations: the fused kernel and the plain tensor-op fallback."""
    reference = make_model()
    flat_model = copy.deepcopy(reference)
    torch_opt = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-5)
    flat_opt = FlatAdam(flat_model.parameters(), lr=1e-2, eps=1e-5)
    if fused:
        assert flat_opt.fused, "this PyTorch build should have the fused CPU Adam kernel"
    flat_opt.fused = fused
    for step in range(25):
        if step == 15:  # a learning-rate change (annealing) takes effect on the next step
            for group in torch_opt.param_groups:
                group["lr"] = 3e-3
            flat_opt.lr = 3e-3
        torch_opt.zero_grad()
        loss_of(reference, step).backward()
        flat_opt.zero_grad()
        loss_of(flat_model, step).backward()
        if max_norm is not None:
            expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
            norm = torch.tensor(flat_opt.clip_grad_norm(max_norm), dtype=expected_norm.dtype)
            torch.testing.assert_close(norm, expected_norm)
        torch_opt.step()
        flat_opt.step()
    for a, b in zip(reference.parameters(), flat_model.parameters(), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and the parameters really moved
    assert not torch.allclose(next(make_model().parameters()), next(flat_model.parameters()))


def test_gradients_land_in_the_flat_buffer_and_zero_grad_clears_them():
    model = make_model()
    opt = FlatAdam(model.parameters(), lr=1e-3)
    loss_of(model, 0).backward()
    assert opt.grad.abs().sum() > 0
    joined = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(joined, opt.grad)
    opt.zero_grad()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    # accumulation over two backward passes, like torch
    loss_of(model, 1).backward()
    once = opt.grad.clone()
    loss_of(model, 1).backward()
    torch.testing.assert_close(opt.grad, 2 * once)


def test_clip_grad_norm_leaves_small_gradients_alone():
    model = make_model()
    opt = FlatAdam(model.parameters(), lr=1e-3)
    loss_of(model, 0).backward()
    before = opt.grad.clone()
    norm = opt.clip_grad_norm(1e6)
    assert norm == pytest.approx(torch.linalg.vector_norm(before).item(), rel=1e-6)
    torch.testing.assert_close(opt.grad, before)
    opt.clip_grad_norm(1e-3)
    assert torch.linalg.vector_norm(opt.grad).item() == pytest.approx(1e-3, rel=1e-3)


def test_fused_and_plain_steps_agree_closely():
    """Switching implementations (e.g. resuming on another build) continues the same optimization."""
    models = [make_model(), make_model()]
    opts = [FlatAdam(m.parameters(), lr=3e-3, eps=1e-5) for m in models]
    opts[1].fused = False
    for step in range(20):
        for model, opt in zip(models, opts, strict=False):
            opt.zero_grad()
            loss_of(model, step).backward()
            opt.step()
    torch.testing.assert_close(opts[0].flat, opts[1].flat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opts[0].exp_avg_sq, opts[1].exp_avg_sq, rtol=1e-5, atol=1e-9)


def test_state_dict_round_trip_continues_identically():
    model_a = make_model()
    opt_a = FlatAdam(model_a.parameters(), lr=1e-2)
    for step in range(3):
        opt_a.zero_grad()
        loss_of(model_a, step).backward()
        opt_a.step()
    model_b = copy.deepcopy(model_a)
    opt_b = FlatAdam(model_b.parameters(), lr=0.5)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.lr == 1e-2 and opt_b.step_count == 3
    for step in range(3, 6):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            loss_of(model, step).backward()
            opt.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=False):
        assert torch.equal(a, b)


def test_load_state_dict_rejects_other_sizes():
    opt = FlatAdam(make_model().parameters(), lr=1e-3)
    other = FlatAdam(nn.Linear(2, 2).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict(other.state_dict())


def test_state_loads_into_another_layout_by_name():
    """A state saved with the parameters in one order (named, or an older unnamed state with the
    order given) continues identically in an optimizer that lays them out in another order."""
    model_a = make_model()
    opt_a = FlatAdam(list(model_a.named_parameters()), lr=1e-2)
    for step in range(3):
        opt_a.zero_grad()
        loss_of(model_a, step).backward()
        opt_a.step()
    saved = opt_a.state_dict()
    assert saved["names"] == [name for name, _ in model_a.named_parameters()]
    unnamed = {key: value for key, value in saved.items() if key != "names"}
    for state, saved_names in ((saved, None), (unnamed, saved["names"])):
        model_b = copy.deepcopy(model_a)
        opt_b = FlatAdam(list(reversed(list(model_b.named_parameters()))), lr=0.5)
        opt_b.load_state_dict(state, saved_names=saved_names)
        assert not torch.equal(opt_b.exp_avg, opt_a.exp_avg)  # laid out differently...
        for step in range(3, 6):
            opt_b.zero_grad()
            loss_of(model_b, step).backward()
            opt_b.step()
        reference = copy.deepcopy(model_a)
        opt_ref = FlatAdam(list(reference.named_parameters()), lr=1e-2)
        opt_ref.load_state_dict(saved)
        for step in range(3, 6):
            opt_ref.zero_grad()
            loss_of(reference, step).backward()
            opt_ref.step()
        for a, b in zip(reference.parameters(), model_b.parameters(), strict=False):
            assert torch.equal(a, b)  # ...and the same steps


def test_load_state_dict_rejects_other_names():
    opt = FlatAdam(list(make_model().named_parameters()), lr=1e-3)
    state = opt.state_dict()
    state["names"] = [f"other.{name}" for name in state["names"]]
    with pytest.raises(ValueError, match="other.0.weight"):
        opt.load_state_dict(state)
