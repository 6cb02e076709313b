"""Training batches: targets shifted by one, the book's epoch loader, exact save/restore, ranks' shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.train.batches import EpochWindows, RandomWindows, eval_windows

TOKENS = torch.arange(1000)


def _drain(sampler, n: int) -> list[torch.Tensor]:
    return [sampler.next()[0] for _ in range(n)]


@pytest.mark.parametrize("make", [
    lambda t: RandomWindows(t, 8, 4, seed=1),
    lambda t: EpochWindows(t, 8, 4, seed=1),
])
def test_targets_are_inputs_shifted_by_one(make):
    x, y = make(TOKENS).next()
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # arange: the next token is the id + 1


def test_memmap_and_tensor_give_the_same_batches(tmp_path):
    path = tmp_path / "t.bin"
    TOKENS.numpy().astype(np.uint16).tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    for cls in (RandomWindows, EpochWindows):
        a, b = cls(TOKENS, 8, 4, seed=3), cls(mm, 8, 4, seed=3)
        for _ in range(5):
            (xa, ya), (xb, yb) = a.next(), b.next()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_windows_are_the_books_loader():
    """Starts at range(0, len - block, stride), each exactly once per epoch, the incomplete batch dropped."""
    sampler = EpochWindows(TOKENS, 10, 3, seed=0, stride=7)
    starts = list(range(0, len(TOKENS) - 10, 7))
    assert sampler.batches_per_epoch == len(starts) // 3
    seen = torch.cat(_drain(sampler, sampler.batches_per_epoch))[:, 0].tolist()
    assert len(seen) == len(set(seen)) == sampler.batches_per_epoch * 3
    assert set(seen) <= set(starts)
    assert sampler.epoch == 1.0
    next_epoch = sampler.next()[0][:, 0].tolist()
    assert next_epoch != seen[:3]  # a new shuffle (seeded per epoch)
    unshuffled = EpochWindows(TOKENS, 10, 3, seed=0, stride=7, shuffle=False)
    assert unshuffled.next()[0][:, 0].tolist() == starts[:3]


@pytest.mark.parametrize("cls", [RandomWindows, EpochWindows])
def test_state_dict_restores_the_exact_position(cls):
    a = cls(TOKENS, 8, 4, seed=5)
    _drain(a, 37)  # past an epoch boundary for EpochWindows
    state = a.state_dict()
    expected = _drain(a, 10)
    b = cls(TOKENS, 8, 4, seed=5)
    b.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(expected, _drain(b, 10)))


@pytest.mark.parametrize("cls", [RandomWindows, EpochWindows])
def test_ranks_share_the_global_batch(cls):
    """Two ranks together see exactly the batches one process with the doubled batch sees."""
    single = cls(TOKENS, 8, 8, seed=2)
    ranks = [cls(TOKENS, 8, 4, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):
        whole = single.next()[0]
        parts = torch.cat([r.next()[0] for r in ranks])
        assert torch.equal(whole, parts)


def test_eval_windows_are_fixed_and_non_overlapping():
    batches = eval_windows(TOKENS, 10, max_batches=2, batch_size=3)
    assert len(batches) == 2
    firsts = torch.cat([x for x, _ in batches])[:, 0].tolist()
    assert firsts == [0, 10, 20, 30, 40, 50]
    assert eval_windows(TOKENS, 10, 2, 3)[1][0].tolist() == batches[1][0].tolist()
    every = eval_windows(TOKENS, 10, max_batches=0, batch_size=7)  # 0: all windows
    assert sum(len(x) for x, _ in every) == len(range(0, len(TOKENS) - 10, 10))


def test_too_little_data_names_the_fix():
    with pytest.raises(GptlabError, match="fewer than one window of 9.*--block-size"):
        RandomWindows(torch.arange(8), 8, 2, seed=0)
    with pytest.raises(GptlabError, match="fewer than one batch of 4"):
        EpochWindows(torch.arange(20), 8, 4, seed=0)
    with pytest.raises(GptlabError, match="validation data has 5 tokens"):
        eval_windows(torch.arange(5), 8, 1, 1)
