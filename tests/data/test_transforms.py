from __future__ import annotations

import torch

from segqc.data.transforms import random_dihedral


def test_same_transform_on_aligned_tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 8, 8)
    mask = (x[:, 0] > 0.5).long()
    x2, mask2 = random_dihedral(x, mask, generator=g)
    assert torch.equal((x2[:, 0] > 0.5).long(), mask2)  # still aligned
    assert not torch.equal(x, x2)  # something moved
    # Each output is one of the 8 symmetries of its input, and nothing is lost.
    for i in range(32):
        candidates = [torch.rot90(x[i], k, (-2, -1)) for k in range(4)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.equal(c, x2[i]) for c in candidates)


def test_inputs_untouched():
    x = torch.rand(4, 1, 4, 4)
    copy = x.clone()
    random_dihedral(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, copy)
