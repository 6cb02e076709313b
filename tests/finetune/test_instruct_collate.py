"""The collate function against hand-made batches (exact tensors), the encoding boundary, the sampler's position."""

from __future__ import annotations

import torch

from gptlab.data.prompts import ALPACA
from gptlab.finetune.instruct.collate import InstructBatches, collate, encode_example, fixed_batches
from gptlab.tokenizer import get_tokenizer

PAD = 50256
X = -100


def test_the_books_example_batch():
    # The book's chapter 7 example: inputs_1..3 collated with pad 50256.
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], PAD)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]]
    assert targets.tolist() == [[1, 2, 3, 4, PAD], [6, PAD, X, X, X], [8, 9, PAD, X, X]]
    assert inputs.dtype == targets.dtype == torch.long


def test_prompt_masking():
    # (ids, prompt length): the first 3 tokens of row 0 and the first 2 of row 1 are the prompt.
    inputs, targets = collate([([10, 11, 12, 13, 14], 3), ([20, 21, 22], 2)], PAD, mask_prompt=True)
    assert inputs.tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, PAD, PAD]]
    # Targets predicting prompt tokens (11, 12 / 21) are ignored; the first answer token is kept.
    assert targets.tolist() == [[X, X, 13, 14, PAD], [X, 22, PAD, X, X]]
    # Without masking, the same batch keeps every real target.
    _, plain = collate([([10, 11, 12, 13, 14], 3), ([20, 21, 22], 2)], PAD)
    assert plain.tolist() == [[11, 12, 13, 14, PAD], [21, 22, PAD, X, X]]


def test_truncation_to_max_length():
    inputs, targets = collate([[1, 2, 3, 4, 5, 6], [7, 8]], PAD, max_length=4)
    assert inputs.tolist() == [[1, 2, 3, 4], [7, 8, PAD, PAD]]
    assert targets.tolist() == [[2, 3, 4, 5], [8, PAD, X, X]]


def test_single_token_and_equal_lengths():
    inputs, targets = collate([[5], [6]], PAD)
    assert inputs.tolist() == [[5], [6]] and targets.tolist() == [[PAD], [PAD]]
    inputs, targets = collate([[1, 2], [3, 4]], 0)  # a pad id that is also a real token
    assert targets.tolist() == [[2, 0], [4, 0]]


def test_encode_example_boundary():
    tok = get_tokenizer("gpt2")
    entry = {"instruction": "Name a color.", "input": "", "output": "Blue."}
    ids, prompt_len = encode_example(tok, ALPACA, entry)
    assert tok.decode(ids[:prompt_len]) == ALPACA.format("Name a color.")
    assert tok.decode(ids[prompt_len:]) == "Blue."
    # Same ids as encoding the book's full text in one piece.
    assert ids == tok.encode(ALPACA.format("Name a color.") + "Blue.")
    # Special-token text in data is ordinary text, never an end-of-text id.
    ids, _ = encode_example(tok, ALPACA, {"instruction": "<|endoftext|>", "output": "<|endoftext|>"})
    assert PAD not in ids


def test_sampler_epochs_and_exact_position():
    encoded = [([i, i + 1], 1) for i in range(0, 20, 2)]  # 10 examples
    a = InstructBatches(encoded, batch_size=3, seed=5, pad_id=PAD)
    assert a.batches_per_epoch == 3
    seen = [a.next()[0][:, 0].tolist() for _ in range(3)]
    flat = sorted(x for batch in seen for x in batch)
    assert len(set(flat)) == 9  # drop_last: 9 of the 10 examples in an epoch, none twice
    state = a.state_dict()
    rest = [a.next()[0].tolist() for _ in range(4)]  # crosses into epoch 2
    b = InstructBatches(encoded, batch_size=3, seed=5, pad_id=PAD)
    b.load_state_dict(state)
    assert [b.next()[0].tolist() for _ in range(4)] == rest
    assert a.epoch == b.epoch > 2


def test_ranks_split_each_global_batch():
    encoded = [([i], 0) for i in range(12)]
    one = InstructBatches(encoded, 4, seed=1, pad_id=PAD)
    r0 = InstructBatches(encoded, 2, seed=1, pad_id=PAD, rank=0, world_size=2)
    r1 = InstructBatches(encoded, 2, seed=1, pad_id=PAD, rank=1, world_size=2)
    for _ in range(5):
        assert one.next()[0].flatten().tolist() == r0.next()[0].flatten().tolist() + r1.next()[0].flatten().tolist()


def test_fixed_batches_keep_the_tail():
    encoded = [([i, i], 0) for i in range(5)]
    batches = fixed_batches(encoded, 2, PAD)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert len(fixed_batches(encoded, 2, PAD, max_batches=2)) == 2
