"""The CPU dropout (`modeling.dropout`): the drop rate, the scale, independent elements, the
gradient through the same mask, repeatability from the seed, and torch's behaviour at the edges."""

from __future__ import annotations

import torch

from longdoc.components.modeling.dropout import Dropout, dropout


def test_drops_at_the_rate_and_scales_what_it_keeps():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 1.0  # no zeros: a zero output means dropped
    y = dropout(x, 0.1)
    kept = y != 0
    rate = 1 - kept.double().mean().item()
    assert abs(rate - 6554 / 65536) < 5 * (0.09 / x.numel()) ** 0.5  # 5 sigma
    torch.testing.assert_close(y[kept], x[kept] * (65536 / (65536 - 6554)), rtol=0, atol=0)
    # neighbours (the four elements drawn from one 64-bit word) are independent
    both = (kept[:, :-1] & kept[:, 1:]).double().mean().item()
    assert abs(both - (1 - rate) ** 2) < 0.003
    assert abs(kept.double().mean(dim=0).std().item() - (0.09 / 1000) ** 0.5) < 0.002


def test_gradient_goes_through_the_same_mask():
    x = (torch.rand(3, 70, 33) + 1.0).requires_grad_()
    g = torch.randn(3, 70, 33)
    y = dropout(x, 0.25)
    y.backward(g)
    scale = 65536 / (65536 - 16384)
    torch.testing.assert_close(x.grad, g * (y != 0) * scale, rtol=0, atol=0)

    def same_mask(t):  # gradcheck calls it many times: reseed so every call drops the same
        torch.manual_seed(1)
        return dropout(t, 0.5)

    assert torch.autograd.gradcheck(
        same_mask, torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    )


def test_the_seed_decides_the_mask_and_the_edges_are_torchs():
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    a = dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.1))
    assert not torch.equal(a, dropout(x, 0.1))  # the next draw differs
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.1)
    assert module.eval()(x) is x and not torch.equal(module.train()(x), x)
    assert module.state_dict() == {}
