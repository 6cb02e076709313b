"""Exact match, token F1 and ROUGE-L against values computed by hand."""

from __future__ import annotations

import pytest

from gptlab.finetune.instruct.metrics import exact_match, lcs_length, normalize, rouge_l, score_entry, token_f1


def test_normalize_and_exact_match():
    assert normalize("  The Cat, sat!  ") == "cat sat"
    assert exact_match("The cat sat.", "cat sat") == 1.0
    assert exact_match("A cat sat", "cat sits") == 0.0


def test_token_f1_by_hand():
    # pred "cat sat on mat" (4 tokens), ref "cat sat on red mat" (5 tokens): overlap 4.
    # P = 4/4, R = 4/5, F1 = 2 * 1 * 0.8 / 1.8 = 0.888...
    assert token_f1("the cat sat on the mat", "a cat sat on a red mat") == pytest.approx(8 / 9)
    # Multiplicity counts: pred "x x y" vs ref "x y y": common = min(2,1) + min(1,2) = 2; P = R = 2/3; F1 = 2/3.
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("word", "") == 0.0 and token_f1("a b", "c d") == 0.0


def test_lcs_by_hand():
    assert lcs_length("a b c d e".split(), "a c e".split()) == 3
    assert lcs_length("a b c b d a b".split(), "b d c a b a".split()) == 4  # CLRS: "b c b a"
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_by_hand():
    # ROUGE tokens: "police killed the gunman" (4) vs "police kill the gunman" (4): LCS = 3
    # ("police", "the", "gunman"); P = R = 3/4, F = 0.75.
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    # pred 7 tokens "the cat was found under the bed", ref 6 tokens "the cat was under the bed":
    # LCS = 6; P = 6/7, R = 1, F = 2 * (6/7) / (13/7) = 12/13.
    assert rouge_l("The cat was found under the bed.", "the cat was under the bed") == pytest.approx(12 / 13)
    assert rouge_l("", "x") == 0.0 and rouge_l("abc", "def") == 0.0
    # Case and punctuation do not count; digits are tokens.
    assert rouge_l("Hello, WORLD 42!", "hello world 42") == 1.0


def test_score_entry_has_all_three():
    s = score_entry("The capital is Paris.", "The capital of France is Paris.")
    # Normalised: "capital is paris" vs "capital of france is paris": overlap 3, P = 1, R = 3/5, F1 = 0.75.
    assert s["exact_match"] == 0.0 and s["token_f1"] == pytest.approx(0.75)
    # ROUGE tokens: 4 vs 6 with LCS 4: P = 1, R = 2/3, F = 0.8.
    assert s["rouge_l"] == pytest.approx(0.8)
