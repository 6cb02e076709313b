"""Sliding-window dataset and create_dataloader against the book's printed values and its own loop."""

from __future__ import annotations

import pytest
import torch

from gptlab.data.corpus import read_text
from gptlab.data.windows import SlidingWindowDataset, count_windows, create_dataloader
from gptlab.errors import GptlabError
from gptlab.tokenizer import CharTokenizer


def book_windows(token_ids: list[int], max_length: int, stride: int) -> tuple[list[list[int]], list[list[int]]]:
    """The book's GPTDatasetV1 loop, verbatim (ch. 2), on plain lists."""
    input_ids, target_ids = [], []
    for i in range(0, len(token_ids) - max_length, stride):
        input_ids.append(token_ids[i : i + max_length])
        target_ids.append(token_ids[i + 1 : i + max_length + 1])
    return input_ids, target_ids


@pytest.fixture(scope="module")
def verdict() -> str:
    return read_text("the-verdict")


def test_book_first_batches(verdict):
    # Book, section 2.6: batch_size=1, max_length=4, stride=1, shuffle=False.
    it = iter(create_dataloader(verdict, batch_size=1, max_length=4, stride=1, shuffle=False))
    x, y = next(it)
    assert x.tolist() == [[40, 367, 2885, 1464]]
    assert y.tolist() == [[367, 2885, 1464, 1807]]
    x, y = next(it)
    assert x.tolist() == [[367, 2885, 1464, 1807]]
    assert y.tolist() == [[2885, 1464, 1807, 3619]]
    assert x.dtype == torch.int64


def test_book_batch_of_eight(verdict):
    # Book, section 2.6: batch_size=8, max_length=4, stride=4 (no overlap between windows).
    x, y = next(iter(create_dataloader(verdict, batch_size=8, max_length=4, stride=4, shuffle=False)))
    assert x.tolist() == [
        [40, 367, 2885, 1464], [1807, 3619, 402, 271], [10899, 2138, 257, 7026], [15632, 438, 2016, 257],
        [922, 5891, 1576, 438], [568, 340, 373, 645], [1049, 5975, 284, 502], [284, 3285, 326, 11],
    ]
    assert y.tolist() == [
        [367, 2885, 1464, 1807], [3619, 402, 271, 10899], [2138, 257, 7026, 15632], [438, 2016, 257, 922],
        [5891, 1576, 438, 568], [340, 373, 645, 1049], [5975, 284, 502, 284], [3285, 326, 11, 287],
    ]


def test_all_verdict_windows_match_book_loop_on_tiktoken_ids(verdict, tiktoken_gpt2):
    ids = tiktoken_gpt2.encode(verdict, allowed_special={"<|endoftext|>"})
    ref_x, ref_y = book_windows(ids, 256, 128)
    loader = create_dataloader(verdict, batch_size=4, max_length=256, stride=128, shuffle=False, drop_last=False)
    xs = torch.cat([x for x, _ in loader]).tolist()
    ys = torch.cat([y for _, y in loader]).tolist()
    assert xs == ref_x and ys == ref_y


def test_window_counts_and_contents_match_brute_force():
    for n in range(1, 41):
        ids = [(7 * i + 3) % 101 for i in range(n)]
        for max_length in range(1, 11):
            for stride in range(1, 13):
                if n <= max_length:
                    with pytest.raises(GptlabError):
                        SlidingWindowDataset(ids, max_length, stride)
                    continue
                ds = SlidingWindowDataset(ids, max_length, stride)
                ref_x, ref_y = book_windows(ids, max_length, stride)
                assert len(ds) == len(ref_x) == count_windows(n, max_length, stride), (n, max_length, stride)
                assert [ds[i][0].tolist() for i in range(len(ds))] == ref_x
                assert [ds[i][1].tolist() for i in range(len(ds))] == ref_y


def test_windows_are_views_of_one_tensor():
    base = torch.arange(1000, dtype=torch.int64)
    ds = SlidingWindowDataset(base, 16, 5)
    assert ds.ids.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()  # int64 input not copied
    for i in (0, 1, len(ds) - 1):
        x, y = ds[i]
        assert x.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
        assert y.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
        assert x.storage_offset() == 5 * i and y.storage_offset() == 5 * i + 1
    # A list is turned into one tensor; every window still views that one tensor.
    ds = SlidingWindowDataset(list(range(50)), 4, 2)
    ptr = ds.ids.untyped_storage().data_ptr()
    assert all(ds[i][0].untyped_storage().data_ptr() == ptr for i in range(len(ds)))


def test_negative_and_out_of_range_index():
    ds = SlidingWindowDataset(list(range(10)), 3, 2)  # windows at 0, 2, 4, 6
    assert ds[-1][0].tolist() == [6, 7, 8]
    with pytest.raises(IndexError):
        ds[4]


def test_seeded_shuffle_is_reproducible_and_independent_of_global_rng():
    ids = list(range(200))

    def order(seed: int, global_seed: int) -> list[list[int]]:
        torch.manual_seed(global_seed)
        loader = create_dataloader(ids, batch_size=3, max_length=4, stride=4, shuffle=True, seed=seed)
        return [x[:, 0].tolist() for x, _ in loader]

    first = order(123, 0)
    assert first == order(123, 999)
    assert order(124, 0) != first
    # It is a permutation of the window starts (drop_last drops the incomplete batch only).
    starts = sorted(s for batch in first for s in batch)
    assert len(starts) == (len(range(0, 200 - 4, 4)) // 3) * 3
    assert set(starts) <= set(range(0, 196, 4))


def test_drop_last():
    ids = list(range(44))  # max_length 4, stride 4 -> windows at 0..36: 10 windows
    kept = list(create_dataloader(ids, batch_size=4, max_length=4, stride=4, shuffle=False, drop_last=True))
    assert [len(x) for x, _ in kept] == [4, 4]
    every = list(create_dataloader(ids, batch_size=4, max_length=4, stride=4, shuffle=False, drop_last=False))
    assert [len(x) for x, _ in every] == [4, 4, 2]
    assert every[-1][0].tolist() == [[32, 33, 34, 35], [36, 37, 38, 39]]


def test_char_tokenizer_by_name():
    text = "to be or not to be"
    loader = create_dataloader(text, tokenizer="char", batch_size=1, max_length=5, stride=5, shuffle=False)
    ids = CharTokenizer.from_text(text).encode(text)
    x, y = next(iter(loader))
    assert x.tolist() == [ids[:5]] and y.tolist() == [ids[1:6]]


def test_endoftext_in_text_is_the_special_id():
    x, _ = next(iter(create_dataloader("Hello<|endoftext|> world", batch_size=1, max_length=2, stride=1, shuffle=False)))
    assert x.tolist() == [[15496, 50256]]


def test_too_short_text_names_lengths():
    with pytest.raises(GptlabError, match=r"3 tokens.*max_length 4 needs 5"):
        create_dataloader([1, 2, 3], max_length=4)
    with pytest.raises(GptlabError, match=r"0 tokens"):
        create_dataloader("", max_length=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_length": 0}, "max_length"), ({"stride": 0}, "stride"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(GptlabError, match=message):
        create_dataloader(list(range(100)), **({"max_length": 4, "stride": 1} | kwargs))


def test_float_ids_rejected():
    with pytest.raises(GptlabError, match="integers"):
        SlidingWindowDataset(torch.zeros(10), 2, 1)
