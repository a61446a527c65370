"""Batches on the device: the batched crop/flip equals a per-image crop/flip; seeds fix epochs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bmtard.data.loader import Batches, random_crop_flip, to_tensor
from bmtard.data.splits import Split


def test_to_tensor_layout_and_range():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, 0, 1] = [255, 0, 51]
    x = to_tensor(torch.from_numpy(img))
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32 and x.is_contiguous()
    assert x[0, :, 0, 1].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_batched_crop_flip_equals_per_image_reference():
    x = torch.rand(6, 3, 8, 8)
    out = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the same order
    top = torch.randint(0, 9, (6,), generator=g)
    left = torch.randint(0, 9, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(6):
        ref = padded[i, :, top[i] : top[i] + 8, left[i] : left[i] + 8]
        if flip[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)


def test_epochs_are_seeded_and_cover_every_image_once():
    split = Split(np.arange(10 * 12, dtype=np.uint8).reshape(10, 2, 2, 3), np.arange(10))
    b = Batches(split, 4, device=torch.device("cpu"), shuffle=True, augment=False, seed=7)
    assert len(b) == 3  # last partial batch kept
    b.set_epoch(1)
    first = torch.cat([y for _, y in b])
    b.set_epoch(1)
    again = torch.cat([y for _, y in b])
    b.set_epoch(2)
    other = torch.cat([y for _, y in b])
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first.tolist()) == list(range(10))


def test_limit_takes_the_first_images_in_order():
    split = Split(np.zeros((10, 2, 2, 3), np.uint8), np.arange(10))
    b = Batches(split, 4, device=torch.device("cpu"), limit=6)
    assert b.num_images == 6
    assert torch.cat([y for _, y in b]).tolist() == list(range(6))
