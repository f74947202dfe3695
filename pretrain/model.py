"""Student/teacher meta-architecture: multi-crop forward, the configured loss terms, EMA.

The student and teacher are the same :class:`Encoder` (timm ViT backbone + heads); the
teacher is a copy updated only by :meth:`MetaArch.update_teacher` (exponential moving
average of the student, no gradient). Which loss terms run is pure configuration, so DINO,
iBOT, MSN and MaskCluster are presets of one model; MSN pairs its views its own way
(:meth:`MetaArch.msn_forward`).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from common.backbone import POS_INTERP, add_pos_embed, backbone_kwargs, build_backbone
from common.config import ConfigError
from common.distributed import all_reduce_mean, is_dist
from pretrain.collapse import TeacherTargets, memax_term
from pretrain.heads import DINOHead, PixelHead, prototype_layer
from pretrain.init import InitBackbone
from pretrain.losses.dino import DINOLoss
from pretrain.losses.ibot import IBOTPatchLoss
from pretrain.losses.koleo import KoLeoLoss
from pretrain.losses.msn import MSNLoss
from pretrain.losses.reconstruction import PixelReconstructionLoss, patchify
from pretrain.sharding import local_shards

log = logging.getLogger(__name__)

# heads.patch.share: none = an own patch head; mlp = the cls head's MLP with own prototypes
# (iBOT's shared_head=false); all = the cls head itself (iBOT's shared_head=true).
PATCH_SHARE = ("none", "mlp", "all")


def backbone_kwargs_from_config(model_cfg, img_size: int) -> dict:
    """timm kwargs of the configured backbone (``model`` section; ``img_size`` = global crop)."""
    return backbone_kwargs(
        model_cfg.arch,
        img_size=img_size,
        patch_size=int(model_cfg.patch_size),
        num_register_tokens=int(model_cfg.num_register_tokens),
        drop_path_rate=float(model_cfg.drop_path_rate),
        stem=str(model_cfg.stem),
        embed_dim=model_cfg.embed_dim,
        depth=model_cfg.depth,
        num_heads=model_cfg.num_heads,
    )


def encode_tokens(
    backbone: VisionTransformer,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
    pos_interp: str = "timm",
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final-norm tokens [B, N, C]; masked patch embeddings are replaced by ``mask_token``.

    Mirrors timm's ``forward_features`` with the replacement inserted before the position
    embedding, as in iBOT/BEiT (the mask token still gets its patch's position); crops of
    another size get their position embeddings by ``pos_interp`` (``model.pos_interp``).
    ``keep``: the patch tokens that stay after the position embedding, in that order (MSN's
    token dropping); the prefix tokens always stay.
    """
    x = backbone.patch_embed(images)  # [B, h, w, C]: dynamic_img_size keeps the grid
    if masks is not None:
        x = torch.where(masks.unsqueeze(-1), mask_token.to(x.dtype), x)
    x = add_pos_embed(backbone, x, pos_interp)
    if keep is not None:
        prefix = int(backbone.num_prefix_tokens)
        index = torch.cat([torch.arange(prefix, device=x.device), prefix + keep.to(x.device)])
        x = x[:, index]
    x = backbone.patch_drop(x)
    x = backbone.norm_pre(x)
    x = backbone.blocks(x)
    return backbone.norm(x)


class Encoder(nn.Module):
    """Backbone plus heads; the student additionally uses the mask token and pixel head."""

    def __init__(
        self,
        model_cfg,
        heads_cfg,
        img_size: int,
        use_patch_head: bool,
        use_pixel_head: bool,
        kwargs: dict | None = None,
    ) -> None:
        """``kwargs``: the backbone's timm kwargs when not the config's (``model.init``)."""
        super().__init__()
        self.kwargs = kwargs or backbone_kwargs_from_config(model_cfg, img_size)
        self.backbone = build_backbone(self.kwargs)
        if self.backbone.cls_token is not None:
            # DINO / iBOT / MSN draw the cls token like the position embeddings (timm: 1e-6).
            nn.init.trunc_normal_(self.backbone.cls_token, std=0.02)
        dim = self.backbone.embed_dim
        self.patch_size = int(self.kwargs["patch_size"])
        self.prefix = int(self.backbone.num_prefix_tokens)
        cls = heads_cfg.cls
        self.cls_head = DINOHead(
            dim,
            cls.out_dim,
            cls.hidden_dim,
            cls.bottleneck_dim,
            cls.nlayers,
            cls.norm_last_layer,
            cls.use_bn,
        )
        patch = heads_cfg.patch
        if patch.share not in PATCH_SHARE:
            raise ConfigError(
                f"heads.patch.share must be one of {list(PATCH_SHARE)}, got {patch.share!r}"
            )
        self.patch_head = None
        self.patch_prototypes = None  # share=mlp: iBOT's own prototypes on the cls head's MLP
        if use_patch_head and patch.share == "mlp":
            self.patch_prototypes = prototype_layer(
                cls.bottleneck_dim, patch.out_dim, patch.norm_last_layer
            )
        if use_patch_head and patch.share == "none":
            self.patch_head = DINOHead(
                dim,
                patch.out_dim,
                patch.hidden_dim,
                patch.bottleneck_dim,
                patch.nlayers,
                patch.norm_last_layer,
                patch.use_bn,
            )
        self.pixel_head = (
            PixelHead(dim, self.patch_size, heads_cfg.pixel.hidden_dim) if use_pixel_head else None
        )
        if cls.input not in ("cls", "avg"):
            raise ValueError(f"heads.cls.input must be 'cls' or 'avg', got {cls.input!r}")
        self.head_input = cls.input
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        if model_cfg.pos_interp not in POS_INTERP:
            raise ConfigError(
                f"model.pos_interp must be one of {list(POS_INTERP)}, got {model_cfg.pos_interp!r}"
            )
        self.pos_interp = str(model_cfg.pos_interp)

    def encode(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return encode_tokens(self.backbone, images, masks, self.mask_token, self.pos_interp, keep)

    def summary(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image-level token the cls head sees: the cls token or the mean patch token."""
        return tokens[:, 0] if self.head_input == "cls" else tokens[:, self.prefix :].mean(dim=1)

    def patch_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.patch_prototypes is not None:
            return self.patch_prototypes(self.cls_head.bottleneck(tokens))
        head = self.patch_head if self.patch_head is not None else self.cls_head
        return head(tokens)

    @property
    def last_layers(self) -> list[nn.Module]:
        """The prototype layers (DINO's ``last_layer``), frozen for the first epochs."""
        heads = [self.cls_head.last_layer, self.patch_prototypes]
        if self.patch_head is not None:
            heads.append(self.patch_head.last_layer)
        return [h for h in heads if h is not None]

    def forward(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor,
        local_crops: torch.Tensor | None,
        with_patch_logits: bool,
        msn: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Student outputs for [G*B] masked global crops and [L*B] local crops.

        Returns ``cls_logits`` [(G+L)*B, K] (globals first), ``cls_tokens`` of the globals,
        and for the masked patches ``patch_logits`` and ``pixel_pred`` when those heads run.
        With ``msn`` (``keep``, ``teacher_bottleneck``) it is MSN's forward instead
        (:meth:`msn_forward`), inside this call so that DDP and FSDP see it.
        """
        if msn is not None:
            return self.msn_forward(global_crops, local_crops, **msn)
        g_tokens = self.encode(global_crops, masks)
        cls_tokens = [self.summary(g_tokens)]
        if local_crops is not None:
            cls_tokens.append(self.summary(self.encode(local_crops)))
        out = {"cls_logits": self.cls_head(torch.cat(cls_tokens)), "cls_tokens": cls_tokens[0]}
        masked = g_tokens[:, self.prefix :][masks.flatten(1)]
        if with_patch_logits:
            out["patch_logits"] = self.patch_logits(masked)
        if self.pixel_head is not None:
            out["pixel_pred"] = self.pixel_head(masked)
        return out

    def msn_forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None,
        keep: torch.Tensor,
        teacher_bottleneck: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """MSN's student: ``cls_logits`` [(1+L)*B, K] of the [B] global crops with only the
        ``keep`` patch tokens, then the [L*B] local crops; the head runs once per crop size,
        so batch norm in it normalises each size on its own (MSN). ``target_logits`` [B, K]:
        the teacher's bottleneck vectors scored against these same prototypes (MSN shares
        them), without gradient."""
        groups = [self.summary(self.encode(global_crops, keep=keep))]
        if local_crops is not None:
            groups.append(self.summary(self.encode(local_crops)))
        logits = torch.cat([self.cls_head(g) for g in groups])
        with torch.no_grad():
            target = self.cls_head.last_layer(teacher_bottleneck)
        return {"cls_logits": logits, "target_logits": target}

    @torch.no_grad()
    def teacher_forward(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor,
        with_patch_logits: bool,
        all_patches: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Teacher logits on unmasked global crops: patch logits at the student's masked
        spots, and with ``all_patches`` those of every patch too (``all_patch_logits``)."""
        tokens = self.encode(global_crops)
        z = self.cls_head.bottleneck(self.summary(tokens))
        out = {"cls_logits": self.cls_head.last_layer(z), "cls_bottleneck": z}
        if with_patch_logits and all_patches:
            logits = self.patch_logits(tokens[:, self.prefix :].flatten(0, 1))
            out["all_patch_logits"] = logits
            out["patch_logits"] = logits[masks.flatten()]
        elif with_patch_logits:
            out["patch_logits"] = self.patch_logits(tokens[:, self.prefix :][masks.flatten(1)])
        return out


class MetaArch(nn.Module):
    """Student, EMA teacher, collapse-avoidance state and loss terms of one run."""

    def __init__(self, cfg, init: InitBackbone | None = None) -> None:
        """``init``: the backbone both encoders start from (``model.init``); heads are fresh."""
        super().__init__()
        loss = cfg.loss
        self.loss_cfg = loss
        self.use_dino = loss.dino.weight > 0
        self.use_ibot = loss.ibot.weight > 0
        self.use_pixel = loss.pixel.weight > 0
        self.use_koleo = loss.koleo_weight > 0
        self.use_msn = loss.msn.weight > 0
        if not (self.use_dino or self.use_ibot or self.use_pixel or self.use_msn):
            raise ValueError(
                "every loss term is off (loss.dino.weight, loss.ibot.weight, "
                "loss.pixel.weight and loss.msn.weight are all 0); enable at least one"
            )
        if self.use_msn:
            check_msn(cfg)
        if (self.use_ibot or self.use_pixel) and cfg.masking.share <= 0:
            raise ValueError(
                "loss.ibot / loss.pixel train on masked patches but masking.share is "
                f"{cfg.masking.share}; set masking.share > 0 (iBOT uses 0.5)"
            )
        self.student = Encoder(
            cfg.model,
            cfg.heads,
            int(cfg.crops.global_size),
            self.use_ibot,
            self.use_pixel,
            kwargs=init.kwargs if init else None,
        )
        if init is not None:
            self.student.backbone.load_state_dict(init.state, strict=True)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.cls_targets = TeacherTargets(
            loss.dino.collapse, cfg.heads.cls.out_dim, loss.center_momentum, loss.sinkhorn_iters
        )
        shared = cfg.heads.patch.share == "all"
        patch_dim = cfg.heads.cls.out_dim if shared else cfg.heads.patch.out_dim
        self.patch_targets = TeacherTargets(
            loss.ibot.collapse, patch_dim, loss.center_momentum, loss.sinkhorn_iters
        )
        self.dino_loss = DINOLoss(loss.student_temp)
        self.ibot_loss = IBOTPatchLoss(loss.student_temp, loss.ibot.normalise)
        # iBOT centres its patch targets on every patch of the teacher's global crops.
        self.center_all_patches = loss.ibot.normalise == "all_crops"
        if int(loss.ibot.start_epoch) > 0 and self.use_pixel:
            raise ConfigError(
                f"loss.ibot.start_epoch={loss.ibot.start_epoch} unmasks the crops until then, "
                "which leaves loss.pixel nothing to reconstruct; set loss.ibot.start_epoch=0 "
                "or loss.pixel.weight=0"
            )
        self.pixel_loss = PixelReconstructionLoss(loss.pixel.norm_pix)
        self.msn_loss = MSNLoss(
            loss.student_temp,
            loss.msn.sharpen,
            loss.msn.label_smoothing,
            int(loss.sinkhorn_iters) if loss.msn.sinkhorn else 0,
        )
        self.koleo_loss = KoLeoLoss()
        # Unbound, so that it takes the teacher as an argument: a deep copy of the model
        # then runs its own teacher. Set to the compiled version by compile_encoders().
        self.teacher_forward = Encoder.teacher_forward

    def compile_encoders(self) -> None:
        """``torch.compile`` the student's forward and the teacher's, in place.

        In place, so parameter names, checkpoints and exports stay those of an eager run.
        Whole encoders, not single blocks: compiling the blocks alone measured 1.00-1.07x on
        an H100 against 1.47x for this (benchmarks/RESULTS.md), since the eager step is
        bound by the norms, casts and elementwise work around the matmuls. The masked-patch
        selection has a data-dependent size: dynamo breaks the graph there and marks that
        size dynamic after the first change.
        """
        self.student.compile()
        self.teacher_forward = torch.compile(Encoder.teacher_forward)

    def train(self, mode: bool = True) -> MetaArch:
        super().train(mode)
        self.teacher.eval()  # no drop-path in the teacher, whatever the student does
        if mode:
            # Batch norm (the conv stem) normalises the teacher's own global crops and keeps
            # running statistics of them, as DINO's teacher does for ResNets: statistics
            # copied from the student would mix in local crops and lag the EMA weights.
            for module in self.teacher.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
        return self

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        teacher_temp: float,
        student: nn.Module | None = None,
        patch_temp: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and per-term values for one multi-crop batch.

        ``student`` is the (possibly DDP-wrapped) student to call; defaults to ``self.student``.
        ``patch_temp``: the teacher temperature of the patch targets (None = ``teacher_temp``).
        """
        student = student if student is not None else self.student
        if self.use_msn:
            return self.msn_forward(batch, student)
        globals_ = batch["global_crops"]  # [G, B, 3, S, S]
        n_global = globals_.shape[0]
        g_flat = globals_.flatten(0, 1)
        masks = batch["masks"].flatten(0, 1)  # [G*B, h, w]
        local = batch.get("local_crops")
        l_flat = local.flatten(0, 1) if local is not None and local.shape[0] > 0 else None
        n_views = n_global + (local.shape[0] if l_flat is not None else 0)

        center_all = self.use_ibot and self.center_all_patches
        t_out = self.teacher_forward(self.teacher, g_flat, masks, self.use_ibot, center_all)
        s_out = student(g_flat, masks, l_flat, self.use_ibot)
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        loss = self.loss_cfg

        if self.use_dino:
            t_probs = self.cls_targets(t_out["cls_logits"], teacher_temp)
            s_logits = s_out["cls_logits"].chunk(n_views)
            terms["dino"] = loss.dino.weight * self.dino_loss(
                list(s_logits), t_probs.chunk(n_global)
            )
            if loss.dino.collapse == "memax":
                s_probs = F.softmax(s_out["cls_logits"].float() / loss.student_temp, dim=-1)
                terms["memax"] = loss.memax_weight * memax_term(s_probs)
            stats.update(_target_stats(t_probs))
            stats["teacher_head_agreement"] = head_agreement(t_out["cls_bottleneck"])
            if loss.dino.collapse == "centering":
                stats["center_norm"] = float(self.cls_targets.center.norm())

        crop_index = torch.arange(g_flat.shape[0], device=masks.device).repeat_interleave(
            masks.flatten(1).sum(dim=1)
        )
        if self.use_ibot:
            # Called on every process even with no masked patch here: the targets all-reduce.
            t_patch = self.patch_targets(
                t_out["patch_logits"],
                teacher_temp if patch_temp is None else patch_temp,
                center_logits=t_out.get("all_patch_logits"),
            )
            terms["ibot"] = loss.ibot.weight * self.ibot_loss(
                s_out["patch_logits"], t_patch, crop_index, g_flat.shape[0]
            )
            if loss.ibot.collapse == "memax":
                s_probs = F.softmax(s_out["patch_logits"].float() / loss.student_temp, dim=-1)
                terms["memax_patch"] = loss.memax_weight * memax_term(s_probs)
        if self.use_pixel:
            target = patchify(g_flat, self.student.patch_size)[masks.flatten(1)]
            terms["pixel"] = loss.pixel.weight * self.pixel_loss(
                s_out["pixel_pred"], target, crop_index, g_flat.shape[0]
            )
        if self.use_koleo:
            per_view = s_out["cls_tokens"].chunk(n_global)
            terms["koleo"] = (
                loss.koleo_weight * sum(self.koleo_loss(v) for v in per_view) / n_global
            )

        total = sum(terms.values())
        stats.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
        stats["mask_ratio"] = float(masks.float().mean())
        return total, stats

    def msn_forward(
        self, batch: dict[str, torch.Tensor], student: nn.Module
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """MSN: the teacher's first global crop is the target of the student's second global
        crop (``batch["keep"]``: its patch tokens that stay) and of every local crop."""
        globals_ = batch["global_crops"]
        local = batch.get("local_crops")
        l_flat = local.flatten(0, 1) if local is not None and local.shape[0] > 0 else None
        t_out = self.teacher_forward(self.teacher, globals_[0], batch["masks"][0], False)
        msn = {"keep": batch["keep"], "teacher_bottleneck": t_out["cls_bottleneck"]}
        s_out = student(globals_[1], None, l_flat, False, msn=msn)
        loss = self.loss_cfg
        probs = self.msn_loss.probs(s_out["cls_logits"])
        targets = self.msn_loss.targets(s_out["target_logits"])
        terms = {
            "msn": loss.msn.weight * self.msn_loss(probs, targets),
            "memax": loss.memax_weight * memax_term(probs),
        }
        stats = {f"loss_{k}": float(v.detach()) for k, v in terms.items()}
        stats.update(_target_stats(targets))
        stats["teacher_head_agreement"] = head_agreement(t_out["cls_bottleneck"])
        return sum(terms.values()), stats

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``theta_t <- m theta_t + (1 - m) theta_s`` for every parameter (or local shard).

        The teacher's batch-norm statistics (conv stem) are its own, updated by its forward
        passes; they are averaged over processes here, in one all-reduce, so that every
        replica's teacher stays identical although each saw only its own batch.
        """
        # Sharded (train.parallel=fsdp): both encoders are sharded alike, so the local
        # shards pair up and the average needs no communication.
        s_params = local_shards(self.student.parameters())
        t_params = local_shards(self.teacher.parameters())
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1 - momentum)
        if not is_dist():
            return
        buffers = [b for b in self.teacher.buffers() if b.is_floating_point()]
        if buffers:
            flat = all_reduce_mean(torch.cat([b.flatten() for b in buffers]))
            chunks = flat.split([b.numel() for b in buffers])
            views = [c.view_as(b) for c, b in zip(chunks, buffers, strict=True)]
            torch._foreach_copy_(buffers, views)


def check_msn(cfg) -> None:
    """One line for a configuration MSN's step cannot run with."""
    loss = cfg.loss
    others = {
        "loss.dino.weight": loss.dino.weight,
        "loss.ibot.weight": loss.ibot.weight,
        "loss.pixel.weight": loss.pixel.weight,
        "loss.koleo_weight": loss.koleo_weight,
    }
    on = [f"{k}=0" for k, v in others.items() if v > 0]
    if on:
        raise ConfigError(f"loss.msn runs alone: set {', '.join(on)}, or loss.msn.weight=0")
    if cfg.masking.share > 0:
        raise ConfigError(
            "loss.msn drops tokens (loss.msn.token_drop) instead of masking them: set "
            "masking.share=0"
        )
    if int(cfg.crops.num_global) != 2:
        raise ConfigError(
            "loss.msn pairs the teacher's global crop with the student's: set crops.num_global=2"
        )
    if not cfg.heads.cls.norm_last_layer:
        raise ConfigError(
            "loss.msn scores cosines against unit-norm prototypes: set "
            "heads.cls.norm_last_layer=true"
        )
    if not 0 <= float(loss.msn.token_drop) < 1:
        raise ConfigError(f"loss.msn.token_drop must be in [0, 1), got {loss.msn.token_drop}")


@torch.no_grad()
def head_agreement(z: torch.Tensor) -> float:
    """Mean cosine between the L2-normalised bottleneck vectors of a batch (self-pairs excluded).

    Near 1 means the head maps every image to one direction: its logits no longer depend
    on the image, the targets turn uniform and the backbone gets no signal (head collapse),
    even when the backbone's own tokens are still diverse.
    """
    n = z.shape[0]
    if n < 2:
        return float("nan")
    total = z.float().sum(dim=0)
    # sum_{i != j} z_i . z_j = |sum z|^2 - sum |z_i|^2, with |z_i| = 1.
    return float((total.dot(total) - n) / (n * (n - 1)))


@torch.no_grad()
def _target_stats(probs: torch.Tensor) -> dict[str, float]:
    """Collapse diagnostics: mean per-sample entropy and entropy of the batch mean."""
    p = probs.float().clamp_min(1e-12)
    mean = probs.float().mean(dim=0).clamp_min(1e-12)
    return {
        "teacher_entropy": float(-(p * p.log()).sum(dim=-1).mean()),
        "teacher_batch_entropy": float(-(mean * mean.log()).sum()),
    }
