"""Projection-head building blocks: batch-statistics normalisation and DINO's BN head."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.heads import BatchStatNorm, DINOHead
from pretrain.model import head_agreement


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    x = x.double()
    mean = x.mean(dim=0)
    var = ((x - mean) ** 2).mean(dim=0)  # biased, as batch norm uses in training
    return (x - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()


def test_batch_stat_norm_matches_the_direct_formula():
    torch.manual_seed(0)
    norm = BatchStatNorm(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(9, 6) * 3 + 1
    expected = _reference(x, norm.weight.detach(), norm.bias.detach(), norm.eps)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_batch_stat_norm_ignores_train_or_eval_mode_and_handles_tiny_batches():
    torch.manual_seed(0)
    norm = BatchStatNorm(4)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = torch.randn(5, 4)
    train_out = norm(x)
    assert torch.equal(norm.eval()(x), train_out)  # no running statistics to switch to
    torch.testing.assert_close(norm(x[:1]), norm.bias.detach().view(1, 4))
    assert norm(x[:0]).shape == (0, 4)


def test_bn_head_keeps_nearly_identical_inputs_apart():
    # Inputs that differ only slightly: a plain MLP maps them to almost one bottleneck
    # direction (head collapse); batch statistics rescale the differences.
    torch.manual_seed(0)
    x = torch.randn(1, 16).repeat(32, 1) + 1e-3 * torch.randn(32, 16)
    plain = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8)
    bn = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8, use_bn=True)
    assert sum(isinstance(m, BatchStatNorm) for m in bn.mlp) == 2
    with torch.no_grad():
        assert head_agreement(plain.bottleneck(x)) > 0.99
        assert head_agreement(bn.bottleneck(x)) < 0.5


def _rank_worker(rank: int, init_file: str, x: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    norm = BatchStatNorm(x.shape[1])
    rows = x[:3] if rank == 0 else x[3:]
    torch.save(norm(rows).detach(), f"{out}.{rank}")
    dist.destroy_process_group()


def test_batch_stat_norm_uses_global_batch_statistics_across_processes(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(8, 5) * 2 + 3  # rank 0 gets 3 rows, rank 1 gets 5
    out = str(tmp_path / "out")
    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), x, out), nprocs=2, join=True)
    parts = torch.cat([torch.load(f"{out}.0"), torch.load(f"{out}.1")])
    expected = _reference(x, torch.ones(5), torch.zeros(5), 1e-5)
    torch.testing.assert_close(parts.double(), expected, rtol=1e-5, atol=1e-5)
    # The statistics of one process's rows alone would give a different result.
    assert not torch.allclose(
        parts[:3].double(), _reference(x[:3], torch.ones(5), torch.zeros(5), 1e-5)
    )


@pytest.mark.parametrize("use_bn", [False, True])
def test_head_config_switch_reaches_the_model(tiny_config, use_bn):
    from pretrain.model import MetaArch

    arch = MetaArch(tiny_config("ibot", f"heads.cls.use_bn={str(use_bn).lower()}"))
    has_bn = any(isinstance(m, BatchStatNorm) for m in arch.teacher.cls_head.modules())
    assert has_bn == use_bn
