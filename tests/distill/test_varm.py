import pytest
import torch

from common.config import load_config
from distill.pseudo_labels import make_refiner
from distill.refine import ParVariationRefine
from distill.varm import VARM

OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _at(x: torch.Tensor, y: int, xx: int) -> torch.Tensor:
    """x[:, y, xx] with the border repeated (replicate padding)."""
    h, w = x.shape[-2:]
    return x[:, min(max(y, 0), h - 1), min(max(xx, 0), w - 1)]


def _reference(img, mask, dilations, num_iter, scale=4.0, w_var=0.01):
    """SCD's VARM written out pixel by pixel from its description, in float64."""
    c, h, w = img.shape
    offs = [(d * dy, d * dx) for d in dilations for dy, dx in OFFSETS]

    def nb(x, y, xx, k):
        """Neighbour map k (x shifted by offset k) read at (y, xx), clamped to the map."""
        y, xx = min(max(y, 0), h - 1), min(max(xx, 0), w - 1)
        return _at(x, y + offs[k][0], xx + offs[k][1])

    aff = torch.zeros(len(offs), h, w, dtype=torch.float64)
    for y in range(h):
        for xx in range(w):
            vals = torch.stack([nb(img, y, xx, k) for k in range(len(offs))])  # [N, C]
            mean = vals.mean(0)
            std = ((vals - mean).pow(2).sum(0) / (len(offs) - 1)).sqrt()
            app, var = [], []
            for k in range(len(offs)):
                z = (vals[k] - img[:, y, xx]).abs() / (std + 1e-8) * scale
                app.append(-(z**2).mean())
                g = (nb(img, y, xx, k) - nb(img, y + 1, xx, k)) ** 2
                g = g + (nb(img, y, xx, k) - nb(img, y, xx + 1, k)) ** 2
                var.append(g.mean())
            app, var = torch.stack(app), torch.stack(var)
            e_app, e_var = (app - app.max()).exp(), (var - var.max()).exp()
            aff[:, y, xx] = e_app / e_app.sum() - w_var * e_var / e_var.sum()
    m = torch.nn.functional.interpolate(
        mask[None], size=(h, w), mode="bilinear", align_corners=True
    )[0]
    for _ in range(num_iter):
        new = torch.zeros_like(m)
        for y in range(h):
            for xx in range(w):
                for k, (dy, dx) in enumerate(offs):
                    new[:, y, xx] += aff[k, y, xx] * _at(m, y + dy, xx + dx)
        m = new
    return m


def test_varm_matches_the_pixelwise_reference_with_scds_dilations():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 7, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 2, 4, 5, generator=g, dtype=torch.float64)
    out = VARM(num_iter=3)(img, mask)
    for b in range(2):
        ref = _reference(img[b], mask[b], (1, 2, 4, 8, 12, 24), 3)
        assert torch.allclose(out[b], ref, atol=1e-6, rtol=0)


def test_varm_rows_sum_to_0_99_so_a_constant_mask_shrinks_1_percent_per_step():
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = VARM(num_iter=10)(img, torch.ones(1, 1, 16, 16))
    assert torch.allclose(out, torch.full_like(out, 0.99**10), atol=1e-5)


def test_varm_keeps_an_image_edge_that_plain_diffusion_blurs():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 3, 32, 32)
    img[..., 16:] = 1.0
    img = img + 0.01 * torch.randn(img.shape, generator=g)
    clean = torch.zeros(1, 1, 32, 32)
    clean[..., 16:] = 1.0
    noisy = clean + 0.25 * torch.randn(clean.shape, generator=g)
    sharp = VARM()(img, noisy)
    blurred = VARM()(torch.rand(1, 3, 32, 32, generator=g) * 1e-3 + 0.5, noisy)
    gap = lambda m: (m[..., 16].mean() - m[..., 15].mean()).item()  # noqa: E731
    assert gap(sharp) > 0.7 and gap(blurred) < 0.5
    assert sharp[..., 2:30, :14].std() < 0.5 * noisy[..., 2:30, :14].std()


def test_make_refiner_follows_refine_method():
    cfg = load_config("distill", "default", ["refine.method=varm"])
    assert isinstance(make_refiner(cfg.refine), VARM)
    cfg = load_config("distill", "default", ["refine.method=par_variation"])
    assert isinstance(make_refiner(cfg.refine), ParVariationRefine)
    cfg = load_config("distill", "default", ["refine.method=scd"])
    with pytest.raises(ValueError, match="varm or par_variation"):
        make_refiner(cfg.refine)


def test_varm_rejects_bad_shapes_and_dilations():
    with pytest.raises(ValueError, match="same B"):
        VARM()(torch.rand(2, 3, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="dilations"):
        VARM(dilations=(0, 1))
