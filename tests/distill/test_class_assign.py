import pytest
import torch
import torch.nn.functional as F

from distill.class_assign import PrototypeBank, assign_classes, class_scores
from distill.quality import assignment_accuracy


def _tokens(direction: torch.Tensor, h: int = 2, w: int = 2) -> torch.Tensor:
    return direction.expand(h, w, -1).clone()


def test_prototypes_split_a_two_object_image_by_token_similarity():
    e1, e2, e3 = torch.eye(3)
    bank = PrototypeBank(num_classes=4, dim=3)
    # Single-object images teach class 1 = e1, class 2 = e2, class 3 = e3.
    imgs = torch.stack([_tokens(e1), _tokens(e2), _tokens(e3)])
    bank.add(imgs, torch.ones(3, 2, 2), [[1], [2], [3]])
    centre, protos = bank.prototypes()
    # A two-object image: left column looks like class 2, right column like class 1.
    tokens = torch.stack([torch.stack([e2, e1]), torch.stack([e2, e1])])[None]
    scores = class_scores(tokens, centre, protos)
    fg = torch.ones(1, 4, 4, dtype=torch.long)
    fg[0, 0, 0] = 255
    out = assign_classes(fg, [[1, 2]], scores, "prototype")
    assert (out[0, 1:, :2] == 2).all() and (out[0, :, 2:] == 1).all()
    assert out[0, 0, 0] == 255  # ignore stays ignore
    # first_label gives everything to the lowest id.
    assert (assign_classes(fg, [[2, 1]], None, "first_label")[0, 1:] == 1).all()


def test_single_label_images_need_no_scores_and_background_stays():
    fg = torch.tensor([[[0, 1], [1, 0]]])
    assert assign_classes(fg, [[7]], None).tolist() == [[[0, 7], [7, 0]]]


def test_images_without_labels_are_an_error_unless_empty_means_background():
    fg = torch.ones(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="no image-level label"):
        assign_classes(fg, [[]], None)
    assert assign_classes(fg, [[]], None, empty_labels="background").sum() == 0


def test_prototype_bank_rejects_background_or_out_of_range_labels():
    bank = PrototypeBank(num_classes=3, dim=2)
    with pytest.raises(ValueError, match="outside 1..2"):
        bank.add(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1), [[3]])


def test_an_image_known_to_be_empty_is_background_even_where_ignored():
    fg = torch.tensor([[[255, 1], [1, 0]]])
    assert assign_classes(fg, [[]], None, empty_labels="background").tolist() == [[[0, 0], [0, 0]]]


def test_prototypes_beat_the_lowest_label_on_planted_multi_label_scenes():
    """The pipeline's rule earns its place: tokens that name the classes are used.

    first_label wins on FashionScenes only through a size prior of its class numbering
    (the big garments have the low ids); with no such prior it gets one object's share.
    """
    g = torch.Generator().manual_seed(0)
    num_classes, dim, size = 6, 16, 8
    codes = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)

    def scene(labels):
        """Objects side by side (equal columns), tokens = class code + noise."""
        target = torch.zeros(size, size, dtype=torch.long)
        cols = torch.linspace(0, size, len(labels) + 1).long().tolist()
        for c, lo, hi in zip(labels, cols[:-1], cols[1:], strict=True):
            target[1:-1, lo:hi] = c
        tokens = torch.randn(size, size, dim, generator=g) * 0.3
        tokens += codes[target] * (target > 0)[..., None]
        return target, tokens

    bank = PrototypeBank(num_classes, dim)
    for c in range(1, num_classes):
        for _ in range(4):
            target, tokens = scene([c])
            bank.add(tokens[None], (target > 0).float()[None], [[c]])
    centre, protos = bank.prototypes()
    targets, labels, scores = [], [], []
    for _ in range(30):
        labs = (torch.randperm(num_classes - 1, generator=g)[:2] + 1).tolist()
        target, tokens = scene(labs)
        targets.append(target)
        labels.append(labs)
        scores.append(class_scores(tokens[None], centre, protos)[0])
    proto = assignment_accuracy(targets, labels, scores, "prototype")["pixel_accuracy"]
    first = assignment_accuracy(targets, labels, scores, "first_label")["pixel_accuracy"]
    assert proto > 0.95 and 0.4 < first < 0.6
