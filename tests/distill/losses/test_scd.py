import pytest
import torch
import torch.nn.functional as F

from distill.losses.scd import SCDLoss, read_points


def _direct(ta, tb, la, lb, pa, pb):
    """The SCD loss written out pair by pair."""
    total, count = 0.0, 0
    for b in range(ta.shape[0]):
        va, vb = read_points(ta, pa)[b], read_points(tb, pb)[b]
        sa, sb = read_points(la, pa)[b], read_points(lb, pb)[b]
        n = va.shape[0]
        t = torch.zeros(n, n)
        q = torch.zeros(n, n)
        for i in range(n):
            for j in range(n):
                t[i, j] = F.cosine_similarity(va[i], vb[j], dim=0, eps=1e-12)
                q[i, j] = F.cosine_similarity(sa[i], sb[j], dim=0, eps=1e-12)
        t = t - t.mean()
        total = total + (-(t * q.clamp(min=0))).sum()
        count += n * n
    return total / count


def test_scd_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    ta, tb = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    la, lb = torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    pa, pb = torch.rand(2, 6, 2, generator=g) * 2 - 1, torch.rand(2, 6, 2, generator=g) * 2 - 1
    loss = SCDLoss(num_points=6)(ta, tb, la, lb, pa, pb)
    assert torch.allclose(loss, _direct(ta, tb, la, lb, pa, pb), atol=1e-5)


def test_scd_is_lower_when_logits_follow_the_pseudo_labels():
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float()
    onehot = torch.cat([1 - labels, labels], dim=1)
    small = F.interpolate(onehot, size=(4, 4), mode="bilinear")
    loss = SCDLoss(num_points=32)
    good = loss(onehot, small, 5 * onehot, 5 * small)
    bad = loss(onehot, small, torch.randn(1, 2, 8, 8, generator=g), torch.randn(1, 2, 4, 4))
    assert good < bad


def test_scd_gradients_reach_only_the_logits():
    ta, tb = torch.rand(1, 2, 4, 4, requires_grad=True), torch.rand(1, 2, 4, 4)
    la = torch.randn(1, 3, 4, 4, requires_grad=True)
    SCDLoss(8)(ta, tb, la, torch.randn(1, 3, 4, 4)).backward()
    assert ta.grad is None and la.grad is not None and la.grad.abs().sum() > 0


def test_scd_rejects_bad_inputs():
    x = torch.rand(2, 2, 4, 4)
    with pytest.raises(ValueError, match="at least 2"):
        SCDLoss(1)
    with pytest.raises(ValueError, match="batch size"):
        SCDLoss(4)(x, x, x, torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
        SCDLoss(4)(x[0], x, x, x)
