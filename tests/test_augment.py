"""Augmentation of training batches (``sws.method.augment``): shifts and flips of images."""

import pytest
import torch

import sws
from sws.method.augment import batch_generator, parse


def test_specs_parse_and_bad_ones_are_named():
    assert parse("") is None and parse("  ") is None
    a = parse("shift:2+flip")
    assert (a.shift, a.flip) == (2, True)
    assert (parse("flip").shift, parse("shift:3").flip) == (0, False)
    for bad, message in [("shift", "whole number of pixels"), ("shift:0", "whole number of pixels"),
                         ("shift:-1", "whole number of pixels"), ("shift:1.5", "whole number of pixels"),
                         ("rotate:10", "unknown transform 'rotate:10'"), ("flip:1", "unknown transform"),
                         ("shift:2+", "unknown transform ''")]:
        with pytest.raises(sws.ConfigError, match=message):
            parse(bad)
    with pytest.raises(sws.ConfigError, match="augment"):
        sws.retrain_config("tutorial", augment="zoom")


@pytest.mark.parametrize("shape", [(64, 1, 9, 11), (64, 9, 11), (64, 3, 9, 11)])
def test_a_shift_moves_each_image_by_at_most_k_pixels_and_fills_zeros(shape):
    h, w = shape[-2], shape[-1]
    x = torch.zeros(shape)
    x[..., 4, 5] = 1.0                                  # one lit pixel per image (and channel)
    if len(shape) == 4:
        x[:, -1, 4, 5] = 2.0                            # channels move together
    y = parse("shift:2")(x, batch_generator(0, 1, 0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y.sum(dim=(-2, -1)), x.sum(dim=(-2, -1)))   # interior pixel: nothing lost
    where = [(img.reshape(-1, h, w)[-1] != 0).nonzero()[0].tolist() for img in y]
    moves = {(r - 4, c - 5) for r, c in where}
    assert all(abs(dr) <= 2 and abs(dc) <= 2 for dr, dc in moves)
    assert len(moves) > 10                             # 25 offsets, drawn per image
    if len(shape) == 4:
        assert torch.equal((y[:, 0] != 0), (y[:, -1] != 0))
    # a pixel at the border leaves the image when moved out of it
    edge = torch.zeros(shape)
    edge[..., 0, 0] = 1.0
    out = parse("shift:2")(edge, batch_generator(0, 1, 0))
    assert 0 < float(out.sum()) < float(edge.sum())


def test_flip_mirrors_about_half_the_images_and_draws_repeat_by_position():
    x = torch.arange(200 * 20, dtype=torch.float32).reshape(200, 1, 4, 5)
    y = parse("flip")(x, batch_generator(1, 2, 3))
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(y, x)])
    same = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert bool((flipped | same).all()) and 60 < int(flipped.sum()) < 140
    assert torch.equal(parse("flip+shift:1")(x, batch_generator(1, 2, 3)),
                       parse("flip+shift:1")(x, batch_generator(1, 2, 3)))
    assert not torch.equal(parse("shift:1")(x, batch_generator(1, 2, 3)),
                           parse("shift:1")(x, batch_generator(1, 2, 4)))


def test_data_that_are_not_images_are_refused_with_one_line():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 3))
    data = torch.utils.data.TensorDataset(torch.randn(40, 8), torch.randint(0, 3, (40,)))
    with pytest.raises(sws.DataError, match=r"augment 'shift:1' shifts and flips images.*shape \(1, 8\)"):
        sws.compress(mlp, data, data, augment="shift:1", epochs=1, finetune_epochs=0)
    tiny = torch.utils.data.TensorDataset(torch.randn(40, 1, 4, 4), torch.randint(0, 3, (40,)))
    conv = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(sws.DataError, match="half or more of the images' 4x4"):
        sws.compress(conv, tiny, tiny, augment="shift:2", epochs=1, finetune_epochs=0)
