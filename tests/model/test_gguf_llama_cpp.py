"""Files from ``write_gguf`` run in llama.cpp itself (through llama-cpp-python, where it is installed).

Every architecture's logits are compared with gptlab's on a random model whose attention is sharpened
(q/k weights scaled up): on a plain random tiny model attention barely moves the logits, and a wrong q/k
row order or RoPE scaling would hide inside float error; sharpened, either one is 30x over the tolerance.

For greedy generation each model is first trained for a few seconds to continue a fixed random token sequence, so that its greedy
choices vary from step to step and win by a wide margin (a random tiny model's top two logits are often
within 1e-3, where float rounding alone would decide). llama.cpp must then produce gptlab's 32 greedy
tokens from the same prompt, in f32, bf16 and q8_0, and split text into gptlab's token ids.
"""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from gptlab.model.gguf_export import write_gguf

llama_cpp = pytest.importorskip("llama_cpp")

# The helpers of the export tests: the same tiny architectures and their trained tokenizers.
from test_gguf_export import CASES, V, make_model  # noqa: E402  (tests/model is on sys.path under pytest)

# case -> (learning rate, steps): enough that the sequence is learned with clear margins.
TRAINED = {"gpt2-tied": (3e-3, 300), "llama-gqa-llama3rope": (1e-2, 150), "qwen3-wide-heads": (1e-2, 150)}


def _train(case: str):
    """``(model, sequence)``: ``make_model(case)`` trained on windows of a repeated 40-token sequence."""
    lr, steps = TRAINED[case]
    model = make_model(case).train()
    g = torch.Generator().manual_seed(0)
    sequence = torch.randint(0, V - 1, (40,), generator=g)  # never <|endoftext|> (V - 1)
    stream = sequence.repeat(8)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - 33, (8,), generator=g)
        x = torch.stack([stream[s:s + 32] for s in starts])
        y = torch.stack([stream[s + 1:s + 33] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), sequence.tolist()


@pytest.fixture(scope="module", params=sorted(TRAINED))
def trained(request, tmp_path_factory, shared_data):
    from gptlab.tokenizer import BPETokenizer
    from gptlab.tokenizer.bpe_pattern import LLAMA3_PATTERN

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    pattern = LLAMA3_PATTERN if request.param.startswith("llama") else None
    tok = BPETokenizer.train(text, V, **({"pattern": pattern} if pattern else {}))
    model, sequence = _train(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    paths = {}
    for outtype in ("f32", "bf16", "q8_0", "q4_0"):
        paths[outtype] = folder / f"{outtype}.gguf"
        write_gguf(model, tok, paths[outtype], outtype=outtype)
    return model, tok, sequence, paths, text


def _llama(path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=False, verbose=False)


@pytest.mark.parametrize("outtype", ["f32", "bf16", "q8_0"])
def test_llama_cpp_greedy_tokens_are_gptlabs(trained, outtype):
    model, _, sequence, paths, _ = trained
    prompt = sequence[:6]
    ours = model.generate(torch.tensor([prompt]), 32)[0, 6:].tolist()
    assert len(set(ours)) > 10  # not degenerate
    llm = _llama(paths[outtype])
    theirs = list(islice(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True), 32))
    assert theirs == ours


def test_q4_0_files_give_llama_cpps_greedy_tokens_in_int4(trained):
    """The same 4-bit integers on both sides: llama.cpp's Q4_0 and gptlab's int4 layers read from the file."""
    from gptlab.model.gguf_import import load_gguf

    _, _, sequence, paths, _ = trained
    loaded, _ = load_gguf(paths["q4_0"])
    assert loaded.quantization["mode"] == "int4"
    prompt = sequence[:6]
    ours = loaded.generate(torch.tensor([prompt]), 32)[0, 6:].tolist()
    llm = _llama(paths["q4_0"])
    theirs = list(islice(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True), 32))
    assert theirs == ours and len(set(ours)) > 10  # (4 bits blur a tiny model's memory of the sequence a little)


def test_llama_cpp_tokenizes_as_gptlab(trained):
    _, tok, _, paths, text = trained
    llm = _llama(paths["f32"])
    sample = text[:2000] + " 1234567 naïve café — “quoted”"
    assert llm.tokenize(sample.encode("utf-8"), add_bos=False, special=False) == tok.encode_ordinary(sample)
    assert llm.tokenize(b"end<|endoftext|>", add_bos=False, special=True)[-1] == tok.eot_id
    assert llm.detokenize(tok.encode_ordinary(sample)).decode("utf-8") == sample


def _sharpened(case: str):
    """``make_model(case)`` with q/k scaled 4x and the other matrices 2x: attention that matters."""
    model = make_model(case)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "emb" not in name:
                p.mul_(4 if any(k in name for k in ("q_proj", "k_proj", "qkv")) else 2)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_llama_cpp_logits_are_gptlabs(case, tmp_path, shared_data):
    from gptlab.model.gguf_import import load_gguf
    from gptlab.tokenizer import BPETokenizer

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    tok = BPETokenizer.train(text, V)
    model = _sharpened(case)
    ids = torch.randint(0, V - 1, (24,), generator=torch.Generator().manual_seed(5)).tolist()
    # f32 against the model itself; bf16 against gptlab computing (in f32) with the file's rounded weights.
    # llama.cpp keeps its KV cache in f16, hence a relative tolerance rather than exact equality.
    for outtype, tolerance in (("f32", 2e-3), ("bf16", 1e-2)):
        path = tmp_path / f"{outtype}.gguf"
        write_gguf(model, tok, path, outtype=outtype)
        reference = model if outtype == "f32" else load_gguf(path, dtype=torch.float32)[0]
        with torch.no_grad():
            ours = reference(torch.tensor([ids]))[0].numpy()
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False)
        llm.eval(ids)
        theirs = llm.scores[: len(ids)]
        assert abs(theirs - ours).max() / abs(ours).max() < tolerance, outtype
