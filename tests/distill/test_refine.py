import torch

from distill.refine import ParVariationRefine, dilated_neighbours, dual_threshold


def test_dilated_neighbours_shift_correctly():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    nb = dilated_neighbours(x, (2,))
    # Offsets in raster order; index 0 is (-2, -2), index 7 is (+2, +2) at dilation 2.
    assert nb[0, 0, 0, 2, 2] == x[0, 0, 0, 0]
    assert nb[0, 0, 7, 2, 2] == x[0, 0, 4, 4]
    assert nb.shape == (1, 1, 8, 5, 5)


def _step_scene(noise: float = 0.25, seed: int = 0):
    """Image: dark left half, bright right half; mask: 0 / 1 halves plus noise."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 3, 32, 32)
    img[..., 16:] = 1.0
    img = img + 0.01 * torch.randn(img.shape, generator=g)
    clean = torch.zeros(1, 1, 32, 32)
    clean[..., 16:] = 1.0
    return img, clean, clean + noise * torch.randn(clean.shape, generator=g)


def test_refine_smooths_flat_regions_and_keeps_the_step_edge():
    img, clean, noisy = _step_scene()
    out = ParVariationRefine(num_iter=10)(img, noisy)
    left, right = out[..., 2:30, :14], out[..., 2:30, 18:]
    # Noise in the flat halves shrinks a lot ...
    assert left.std() < 0.5 * noisy[..., 2:30, :14].std()
    assert right.std() < 0.5 * noisy[..., 2:30, 18:].std()
    # ... while the columns either side of the edge stay far apart (no leaking across).
    assert out[..., 15].mean() < 0.15 and out[..., 16].mean() > 0.85
    assert (out - clean).abs().mean() < 0.5 * (noisy - clean).abs().mean()


def test_appearance_kernel_is_what_keeps_the_edge():
    img, _, noisy = _step_scene()
    flat_img = torch.zeros_like(img)  # no edge to follow: plain diffusion blurs the step
    blurred = ParVariationRefine(num_iter=10)(flat_img, noisy)
    sharp = ParVariationRefine(num_iter=10)(img, noisy)
    gap = lambda m: (m[..., 16].mean() - m[..., 15].mean()).item()  # noqa: E731
    assert gap(sharp) > 0.7 and gap(blurred) < 0.5


def test_refine_upsamples_patch_masks_to_the_image():
    img, _, _ = _step_scene()
    out = ParVariationRefine(num_iter=2)(img, torch.rand(1, 3, 4, 4))
    assert out.shape == (1, 3, 32, 32)


def test_dual_threshold_ignores_uncertain_and_disagreeing_pixels():
    raw = torch.tensor([[[0.0, 0.45, 0.55, 1.0, 0.9]]])
    refined = torch.tensor([[[0.0, 0.5, 0.49, 1.0, 0.2]]])
    t = torch.tensor([0.5])
    out = dual_threshold(raw, refined, t, band=0.05, ignore_disagreement=True)
    # 0.5 +- 0.05 (5% of the range 1.0): pixel 1 and 2 are in the band, pixel 4 disagrees.
    assert out.tolist() == [[[0, 255, 255, 1, 255]]]
    out = dual_threshold(raw, refined, t, band=0.0, ignore_disagreement=False)
    assert out.tolist() == [[[0, 1, 0, 1, 0]]]
