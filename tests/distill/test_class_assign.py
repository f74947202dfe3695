import pytest
import torch

from distill.class_assign import PrototypeBank, assign_classes, class_scores


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
