"""The meta-architecture: loss terms present per preset, EMA update, teacher without gradient."""

import pytest
import torch

from pretrain.heads import DINOHead
from pretrain.model import Encoder, MetaArch, head_agreement


def _batch(cfg, b=4):
    c = cfg.crops
    grid = c.global_size // cfg.model.patch_size
    masks = torch.zeros(2, b, grid, grid, dtype=torch.bool)
    masks[0, :2, :1] = True
    return {
        "global_crops": torch.randn(2, b, 3, c.global_size, c.global_size),
        "local_crops": torch.randn(c.num_local, b, 3, c.local_size, c.local_size),
        "masks": masks,
    }


@pytest.mark.parametrize(
    "preset,terms",
    [
        ("dino", {"loss_dino"}),
        ("ibot", {"loss_dino", "loss_ibot"}),
        ("msn", {"loss_msn", "loss_memax"}),
        ("maskcluster", {"loss_dino", "loss_ibot", "loss_pixel", "loss_koleo"}),
    ],
)
def test_presets_compute_their_terms_and_only_the_student_gets_gradients(
    tiny_config, preset, terms
):
    koleo = [] if preset == "msn" else ["loss.koleo_weight=0.1"]  # MSN runs alone
    cfg = tiny_config(preset, *koleo)
    model = MetaArch(cfg)
    batch = _batch(cfg)
    batch["keep"] = torch.tensor([0, 2, 3])
    loss, stats = model(batch, teacher_temp=0.04)
    assert terms | set(["loss_koleo"] if koleo else []) == {
        k for k in stats if k.startswith("loss_")
    }
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_teacher_is_an_ema_of_the_student(tiny_config):
    model = MetaArch(tiny_config("dino"))
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.9)
    for t_old, t_new, s in zip(
        before, model.teacher.parameters(), model.student.parameters(), strict=True
    ):
        assert torch.allclose(t_new, 0.9 * t_old + 0.1 * s)


def test_mean_patch_token_head_input(tiny_config):
    cfg = tiny_config("dino", "heads.cls.input=avg")
    loss, _ = MetaArch(cfg)(_batch(cfg), teacher_temp=0.04)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="heads.cls.input"):
        MetaArch(tiny_config("dino", "heads.cls.input=max"))


def test_dino_head_prototypes_give_cosine_logits():
    head = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8)
    logits = head(torch.randn(5, 16) * 100)
    assert logits.abs().max() <= 1 + 1e-5
    assert not head.last_layer.parametrizations.weight.original0.requires_grad


def test_all_terms_off_is_an_error(tiny_config):
    with pytest.raises(ValueError, match="enable at least one"):
        MetaArch(tiny_config("dino", "loss.dino.weight=0.0"))


def test_head_agreement_is_the_mean_off_diagonal_cosine():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    cos = z @ z.T
    expected = (cos.sum() - cos.diagonal().sum()) / (7 * 6)
    assert head_agreement(z.float()) == pytest.approx(float(expected), abs=1e-6)
    # One direction for every image is head collapse (1); orthonormal vectors give 0.
    assert head_agreement(z[:1].float().repeat(4, 1)) == pytest.approx(1.0, abs=1e-6)
    assert head_agreement(torch.eye(5)) == pytest.approx(0.0, abs=1e-7)


def test_a_collapsed_teacher_head_is_reported(tiny_config):
    cfg = tiny_config("dino")
    arch = MetaArch(cfg)
    _, stats = arch(_batch(cfg), teacher_temp=0.04)
    assert stats["teacher_head_agreement"] < 0.99
    last = arch.teacher.cls_head.mlp[-1]
    with torch.no_grad():  # the head now ignores its input: one bottleneck vector for all
        last.weight.zero_()
        last.bias.normal_()
    _, stats = arch(_batch(cfg), teacher_temp=0.04)
    assert stats["teacher_head_agreement"] == pytest.approx(1.0, abs=1e-5)


def test_teacher_batch_norm_keeps_its_own_statistics_of_global_crops(tiny_config):
    cfg = tiny_config("dino", "model.stem=conv")
    model = MetaArch(cfg).train()
    teacher_bn = model.teacher.backbone.patch_embed.proj[1]
    student_bn = model.student.backbone.patch_embed.proj[1]
    assert not model.teacher.training and teacher_bn.training  # drop-path off, BN on batches
    batch = _batch(cfg)
    model(batch, teacher_temp=0.04)
    # One teacher pass (global crops), two student passes (global crops, local crops).
    assert int(teacher_bn.num_batches_tracked) == 1 and int(student_bn.num_batches_tracked) == 2
    with torch.no_grad():
        first = model.teacher.backbone.patch_embed.proj[0](batch["global_crops"].flatten(0, 1))
    expected = 0.9 * torch.zeros(first.shape[1]) + 0.1 * first.mean(dim=(0, 2, 3))
    assert torch.allclose(teacher_bn.running_mean, expected, atol=1e-6)
    model.update_teacher(0.99)  # single process: the statistics stay the teacher's own
    assert torch.allclose(teacher_bn.running_mean, expected, atol=1e-6)
    assert not model.eval().teacher.backbone.patch_embed.proj[1].training


def test_the_knn_probe_leaves_the_teacher_batch_norm_training(tiny_config):
    from pretrain.probe import extract_features

    cfg = tiny_config("dino", "model.stem=conv")
    model = MetaArch(cfg).train()
    extract_features(model.teacher.backbone, torch.rand(4, 3, 16, 16), 16)
    assert model.teacher.backbone.patch_embed.proj[1].training  # still its own statistics
    assert not model.teacher.backbone.training and not model.teacher.backbone.blocks.training


def test_compile_encoders_is_in_place(tiny_config):
    model = MetaArch(tiny_config("dino"))
    keys = list(model.state_dict())
    model.compile_encoders()  # compiles lazily: nothing runs until the first call
    assert model.student._compiled_call_impl is not None
    assert model.teacher_forward is not Encoder.teacher_forward
    assert list(model.state_dict()) == keys  # checkpoints keep the eager names
