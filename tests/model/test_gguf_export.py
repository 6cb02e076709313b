"""GGUF both ways: ``write_gguf`` checked against gguf-py's reader (llama.cpp's own Python package), and
``load_gguf`` reading the files back into models whose logits and tokenizers match the originals.

The cases cover every architecture gptlab writes (gpt2, llama, qwen2, qwen3) with tied and untied heads,
grouped-query attention, biases, q/k norms, heads wider than the model, Llama 3 and linear RoPE scaling,
and a row length that q8_0 cannot quantize. Norms and biases are random so that a misplaced one shows.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.config import modern
from gptlab.model.gguf_export import write_gguf
from gptlab.model.gguf_import import load_gguf
from gptlab.tokenizer import BPETokenizer, CharTokenizer
from gptlab.tokenizer.bpe_pattern import LLAMA3_PATTERN
from gptlab.tokenizer.byte_alphabet import bytes_to_unicode

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
V = 320  # the trained tokenizers' size; some models round their table up past it

# case -> (llama.cpp architecture, config fields). Widths are multiples of 32 (q8_0 blocks) except where said.
CASES = {
    "gpt2-tied": ("gpt2", dict(vocab_size=V, context_length=64, emb_dim=64, n_heads=2, n_layers=2, drop_rate=0.0,
                               qkv_bias=True, tie_weights=True)),
    # Rows of 48 are not whole q8_0 blocks (f16 instead); exact GELU; no q/k/v bias (zeros are written).
    "gpt2-untied-odd": ("gpt2", dict(vocab_size=V + 3, context_length=32, emb_dim=48, n_heads=3, n_layers=2,
                                     drop_rate=0.0, qkv_bias=False, tie_weights=False, ff_dim=96, activation="gelu",
                                     layer_norm_eps=1e-6)),
    "llama-gqa-llama3rope": ("llama", dict(vocab_size=V, context_length=128, emb_dim=64, n_heads=2, n_kv_heads=1,
                                           n_layers=2, ff_dim=96, rope_theta=10000.0, rope_scaling=LLAMA3)),
    "llama-biases-linear-fused": ("llama", dict(vocab_size=V, context_length=64, emb_dim=64, n_heads=4, n_layers=2,
                                                ff_dim=64, qkv_bias=True, proj_bias=True, mlp_bias=True,
                                                fused_qkv=True, tie_weights=True,
                                                rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2-gqa-tied": ("qwen2", dict(vocab_size=V + 32, context_length=64, emb_dim=64, n_heads=4, n_kv_heads=2,
                                     n_layers=2, ff_dim=128, qkv_bias=True, rope_theta=1_000_000.0, tie_weights=True,
                                     layer_norm_eps=1e-6)),
    "qwen3-wide-heads": ("qwen3", dict(vocab_size=V, context_length=64, emb_dim=64, n_heads=4, n_kv_heads=2,
                                       head_size=32, n_layers=2, ff_dim=96, qk_norm=True, rope_theta=1_000_000.0,
                                       layer_norm_eps=1e-6)),
}


def make_model(case: str, seed: int = 0) -> GPT:
    """A random model of the case, its norms and biases randomised too, in eval mode."""
    arch, fields = CASES[case]
    cfg = GPTConfig(**fields) if arch == "gpt2" else modern(**fields)
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def text(shared_data) -> str:
    return (shared_data / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizers(text) -> dict[str, BPETokenizer]:
    """A GPT-2-pattern and a Llama-3-pattern BPE of V ids (the last one <|endoftext|>)."""
    return {"gpt2": BPETokenizer.train(text, V), "llama": BPETokenizer.train(text, V, pattern=LLAMA3_PATTERN)}


def _tok_for(case: str, tokenizers) -> BPETokenizer:
    return tokenizers["gpt2" if CASES[case][0] == "gpt2" or "qwen" in case else "llama"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizers):
    """``(case, outtype) -> (model, tokenizer, path)``, each file written once for the module."""
    cache: dict = {}

    def get(case: str, outtype: str):
        if (case, outtype) not in cache:
            model, tok = make_model(case), _tok_for(case, tokenizers)
            path = tmp_path_factory.mktemp("gguf") / f"{case}-{outtype}.gguf"
            assert write_gguf(model, tok, path, outtype=outtype, name=case) == CASES[case][0]
            cache[case, outtype] = model, tok, path
        return cache[case, outtype]

    return get


def _expected_tensors(cfg: GPTConfig, arch: str) -> dict[str, list[int]]:
    """llama.cpp's tensor names and ggml shapes (innermost first) for this model, written out by hand."""
    d, v, q, kv, ff = cfg.emb_dim, cfg.vocab_size, cfg.q_dim, cfg.kv_dim, cfg.hidden_dim
    out = {"token_embd.weight": [d, v], "output_norm.weight": [d]}
    if not cfg.tie_weights:
        out["output.weight"] = [d, v]
    if arch == "gpt2":
        out |= {"position_embd.weight": [d, cfg.context_length], "output_norm.bias": [d]}
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "llama3":
        out["rope_freqs.weight"] = [cfg.head_dim // 2]
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        if arch == "gpt2":
            for norm in ("attn_norm", "ffn_norm"):
                out |= {f"{b}{norm}.weight": [d], f"{b}{norm}.bias": [d]}
            out |= {f"{b}attn_qkv.weight": [d, 3 * d], f"{b}attn_qkv.bias": [3 * d],
                    f"{b}attn_output.weight": [d, d], f"{b}attn_output.bias": [d],
                    f"{b}ffn_up.weight": [d, ff], f"{b}ffn_up.bias": [ff],
                    f"{b}ffn_down.weight": [ff, d], f"{b}ffn_down.bias": [d]}
            continue
        out |= {f"{b}attn_norm.weight": [d], f"{b}ffn_norm.weight": [d], f"{b}attn_q.weight": [d, q],
                f"{b}attn_k.weight": [d, kv], f"{b}attn_v.weight": [d, kv], f"{b}attn_output.weight": [q, d],
                f"{b}ffn_gate.weight": [d, ff], f"{b}ffn_up.weight": [d, ff], f"{b}ffn_down.weight": [ff, d]}
        if cfg.qkv_bias:
            out |= {f"{b}attn_q.bias": [q], f"{b}attn_k.bias": [kv], f"{b}attn_v.bias": [kv]}
        if cfg.proj_bias:
            out[f"{b}attn_output.bias"] = [d]
        if cfg.mlp_bias:
            out |= {f"{b}ffn_gate.bias": [ff], f"{b}ffn_up.bias": [ff], f"{b}ffn_down.bias": [d]}
        if cfg.qk_norm:
            out |= {f"{b}attn_q_norm.weight": [cfg.head_dim], f"{b}attn_k_norm.weight": [cfg.head_dim]}
    return out


def _fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


@pytest.mark.parametrize("outtype", ["f32", "bf16", "q8_0"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_structure_is_what_llama_cpp_reads(exported, case, outtype):
    model, tok, path = exported(case, outtype)
    cfg, arch = model.cfg, CASES[case][0]
    reader = gguf.GGUFReader(path)
    meta = _fields(reader)
    assert meta["general.architecture"] == arch and meta["general.name"] == case
    assert meta["general.file_type"] == {"f32": 0, "bf16": 32, "q8_0": 7}[outtype]
    assert meta[f"{arch}.context_length"] == cfg.context_length
    assert meta[f"{arch}.embedding_length"] == cfg.emb_dim
    assert meta[f"{arch}.block_count"] == cfg.n_layers
    assert meta[f"{arch}.feed_forward_length"] == cfg.hidden_dim
    assert meta[f"{arch}.attention.head_count"] == cfg.n_heads
    assert meta[f"{arch}.attention.head_count_kv"] == cfg.kv_heads
    eps_key = "layer_norm_epsilon" if arch == "gpt2" else "layer_norm_rms_epsilon"
    assert meta[f"{arch}.attention.{eps_key}"] == pytest.approx(cfg.layer_norm_eps, rel=1e-6)
    if arch != "gpt2":
        assert meta[f"{arch}.rope.freq_base"] == pytest.approx(cfg.rope_theta, rel=1e-6)
        assert meta[f"{arch}.rope.dimension_count"] == cfg.head_dim
        assert meta.get(f"{arch}.attention.key_length") == (cfg.head_dim if case == "qwen3-wide-heads" else None)
        linear = case == "llama-biases-linear-fused"
        assert meta.get(f"{arch}.rope.scaling.type") == ("linear" if linear else None)
        assert meta.get(f"{arch}.rope.scaling.factor") == (2.0 if linear else None)

    expected = _expected_tensors(cfg, arch)
    got = {t.name: t for t in reader.tensors}
    assert sorted(got) == sorted(expected)
    wanted = {"f32": "F32", "bf16": "BF16", "q8_0": "Q8_0"}[outtype]
    for name, t in got.items():
        assert [int(n) for n in t.shape] == expected[name], name
        vector = len(expected[name]) == 1 or name.startswith("position_embd")
        odd_rows = outtype == "q8_0" and expected[name][0] % 32
        want = "F32" if vector else "F16" if odd_rows else wanted
        assert t.tensor_type.name == want, name


def _spelled(tok: BPETokenizer, idx: int) -> str:
    alphabet = bytes_to_unicode()
    return "".join(alphabet[b] for b in tok.decode_bytes([idx]))


@pytest.mark.parametrize("case", ["gpt2-untied-odd", "llama-gqa-llama3rope"])
def test_vocabulary_is_the_tokenizers(exported, case):
    model, tok, path = exported(case, "f32")
    meta = _fields(gguf.GGUFReader(path))
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == ("gpt-2" if case.startswith("gpt2") else "llama-bpe")
    eot = tok.eot_id
    tokens = [_spelled(tok, i) for i in range(eot)] + ["<|endoftext|>"]
    tokens += [f"[PAD{i}]" for i in range(tok.n_vocab, model.cfg.vocab_size)]
    assert meta["tokenizer.ggml.tokens"] == tokens
    types = meta["tokenizer.ggml.token_type"]
    assert types[:eot] == [1] * eot and types[eot] == 3 and set(types[eot + 1:]) <= {5}
    # Every merge joins two tokens into the next one, in id order: the tokenizer's training record.
    merges = meta["tokenizer.ggml.merges"]
    assert len(merges) == eot - 256
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ")
        assert tokens[256 + rank] == left + right
        assert tokens.index(left) < 256 + rank and tokens.index(right) < 256 + rank
    assert meta["tokenizer.ggml.eos_token_id"] == eot
    assert "tokenizer.ggml.bos_token_id" not in meta and meta["tokenizer.ggml.add_bos_token"] is False


def test_llama_q_and_k_rows_are_in_llama_cpps_pair_order(exported):
    """Row 2i of a head in the file is row i of gptlab's, row 2i+1 is row i + D/2; qwen's are unchanged."""
    model, _, path = exported("llama-gqa-llama3rope", "f32")
    reader = {t.name: t for t in gguf.GGUFReader(path).tensors}
    cfg = model.cfg
    half = cfg.head_dim // 2
    for proj, heads in (("q", cfg.n_heads), ("k", cfg.kv_heads)):
        ours = getattr(model.blocks[1].att, f"{proj}_proj").weight.detach().numpy()
        theirs = np.asarray(reader[f"blk.1.attn_{proj}.weight"].data)
        for h in range(heads):
            base = h * cfg.head_dim
            for i in range(half):
                np.testing.assert_array_equal(theirs[base + 2 * i], ours[base + i])
                np.testing.assert_array_equal(theirs[base + 2 * i + 1], ours[base + half + i])
    qwen, _, qpath = exported("qwen2-gqa-tied", "f32")
    stored = {t.name: t for t in gguf.GGUFReader(qpath).tensors}
    np.testing.assert_array_equal(np.asarray(stored["blk.0.attn_k.weight"].data), qwen.blocks[0].att.k_proj.weight.detach().numpy())
    np.testing.assert_array_equal(np.asarray(stored["blk.0.attn_k.bias"].data), qwen.blocks[0].att.k_proj.bias.detach().numpy())


def test_llama3_rope_freqs_are_llama_cpps_divisors(exported):
    model, _, path = exported("llama-gqa-llama3rope", "f32")
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}["rope_freqs.weight"]
    dim = model.cfg.head_dim
    base = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))
    # Dividing the base frequencies by the stored factors gives the scaled frequencies gptlab computes.
    torch.testing.assert_close(base / torch.from_numpy(np.asarray(stored.data).copy()), model.rope_inv_freq)


def _ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", sorted(CASES))
def test_f32_round_trip_gives_the_same_model(exported, case, text):
    model, tok, path = exported(case, "f32")
    loaded, loaded_tok = load_gguf(path)
    assert loaded.tok_emb.weight.dtype == torch.float32  # the file's type
    expected = model.cfg.replace(fused_qkv=False) if CASES[case][0] != "gpt2" else model.cfg
    if case == "gpt2-untied-odd":
        expected = expected.replace(qkv_bias=True)  # written as zeros, read as the bias it is
    assert loaded.cfg == expected
    assert (loaded.out_head.weight is loaded.tok_emb.weight) == model.cfg.tie_weights
    ids = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=1e-5, rtol=0)
    sample = text[:3000] + " <|endoftext|> 1234567 naïve"
    assert loaded_tok.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")
    assert loaded_tok.decode(tok.encode(sample, allowed_special="all")) == sample
    assert tok.eot_id in loaded_tok.stop_ids


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_round_trip_matches_the_model_in_bf16(exported, case):
    model, _, path = exported(case, "bf16")
    loaded, _ = load_gguf(path)
    assert loaded.tok_emb.weight.dtype == torch.bfloat16  # the file's type, by default
    ids = _ids(model.cfg.vocab_size, seed=1)
    reference = make_model(case).to(torch.bfloat16)
    with torch.no_grad():
        # The same roundings of the same weights (vectors are stored in f32, then cast like the model's).
        torch.testing.assert_close(loaded(ids), reference(ids), atol=0, rtol=0)
        full = model(ids)
        err = (loaded(ids).float() - full).norm() / full.norm()
    assert err < 0.02


@pytest.mark.parametrize("case", sorted(CASES))
def test_q8_0_round_trip_is_close(exported, case):
    model, _, path = exported(case, "q8_0")
    loaded, _ = load_gguf(path, dtype=torch.float32)
    ids = _ids(model.cfg.vocab_size, seed=2)
    with torch.no_grad():
        got, want = loaded(ids), model(ids)
    assert (got - want).norm() / want.norm() < 0.02
    assert not torch.equal(got, want)  # really quantized
    assert load_gguf(path)[0].tok_emb.weight.dtype == torch.bfloat16  # a quantized file loads as bf16


def test_q4_0_files_load_and_other_types_are_refused(tmp_path, tokenizers, monkeypatch):
    """Files from llama.cpp's quantizer: Q4_0 is read (coarse, but close), Q4_1 named and refused."""
    from gptlab.model import gguf_export

    monkeypatch.setitem(gguf_export.OUTTYPES, "q4_0", (gguf.LlamaFileType.MOSTLY_Q4_0, gguf.GGMLQuantizationType.Q4_0))
    monkeypatch.setitem(gguf_export.OUTTYPES, "q4_1", (gguf.LlamaFileType.MOSTLY_Q4_1, gguf.GGMLQuantizationType.Q4_1))
    model = make_model("qwen3-wide-heads")
    write_gguf(model, tokenizers["gpt2"], tmp_path / "q4.gguf", outtype="q4_0")
    loaded, _ = load_gguf(tmp_path / "q4.gguf", dtype=torch.float32)
    ids = _ids(V, seed=3)
    with torch.no_grad():
        want = model(ids)
        assert (loaded(ids) - want).norm() / want.norm() < 0.2
    write_gguf(model, tokenizers["gpt2"], tmp_path / "q41.gguf", outtype="q4_1")
    with pytest.raises(GptlabError, match=r"q41.gguf: tensor token_embd\.weight has type Q4_1; gptlab reads F32, F16, BF16, Q8_0, Q4_0$"):
        load_gguf(tmp_path / "q41.gguf")


@pytest.mark.parametrize("case", ["llama-gqa-llama3rope", "qwen2-gqa-tied", "qwen3-wide-heads"])
def test_q4_0_linear_layers_stay_int4_with_the_files_integers(tmp_path, tokenizers, case):
    """A Q4_0 block is exactly an int4 group of 32 (scale d, minimum -8d): the layers hold the file's values."""
    from gptlab.model.gguf_names import from_pairs, gguf_name
    from gptlab.model.quantize import Int4Linear
    from gptlab.tokenizer.gguf_vocab import read_gguf_tensors

    model = make_model(case)
    path = tmp_path / "q4.gguf"
    write_gguf(model, tokenizers["gpt2"], path, outtype="q4_0")
    kept, _ = load_gguf(path)
    floats, _ = load_gguf(path, dtype=torch.float32, keep_int4=False)
    assert kept.quantization == {"mode": "int4", "group_size": 32} and not hasattr(floats, "quantization")
    reader = gguf.GGUFReader(path)
    raw = {t.name: t for t in reader.tensors}
    layers = {n: m for n, m in kept.named_modules() if isinstance(m, Int4Linear)}
    assert "blocks.0.att.q_proj" in layers and "out_head" in layers and layers["out_head"].group_size == 32
    for name, layer in layers.items():
        tied_head = name == "out_head" and kept.cfg.tie_weights
        key = gguf_name("tok_emb.weight" if tied_head else f"{name}.weight")
        t = raw[key]
        assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0
        want = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(layer.out_features, -1)
        if CASES[case][0] == "llama" and (".q_proj" in name or ".k_proj" in name):  # llama.cpp's row order
            want = from_pairs(want, kept.cfg.n_heads if ".q_proj" in name else kept.cfg.kv_heads)
        assert torch.equal(layer.dequantized(), want), name  # the very values llama.cpp computes with
        # ... and the same as the dequantized float model's weight
        assert torch.equal(layer.dequantized(), floats.get_submodule(name).weight.float()), name
    assert layers["out_head"].qweight.dtype == torch.uint8 and kept.tok_emb.weight.dtype == torch.bfloat16
    ids = _ids(model.cfg.vocab_size, seed=4)
    with torch.no_grad():
        got, want = kept(ids).float(), floats(ids)
    assert (got - want).norm() / want.norm() < 0.03  # bf16 activations and scales, the same integers


def test_load_model_keeps_q4_0_as_int4_unless_asked_for_another_quantization(tmp_path, tokenizers):
    from gptlab.model.load import load_model
    from gptlab.model.quantize import Int4Linear, Int8Linear

    path = tmp_path / "q4.gguf"
    write_gguf(make_model("qwen2-gqa-tied"), tokenizers["gpt2"], path, outtype="q4_0")
    model, _ = load_model(path)
    assert model.quantization["mode"] == "int4" and isinstance(model.blocks[0].ff.up, Int4Linear)
    model, _ = load_model(path, quantize="int8")
    assert model.quantization["mode"] == "int8" and isinstance(model.blocks[0].ff.up, Int8Linear)


def test_unsupported_architecture_is_named(tmp_path, tokenizers, monkeypatch):
    from gptlab.model import gguf_export

    monkeypatch.setattr(gguf_export, "gguf_arch", lambda cfg: "phi3")
    write_gguf(make_model("llama-gqa-llama3rope"), tokenizers["llama"], tmp_path / "phi.gguf")
    with pytest.raises(GptlabError, match="architecture 'phi3' is not supported; gptlab reads gpt2, llama, qwen2, qwen3"):
        load_gguf(tmp_path / "phi.gguf")


def test_tokenizers_gguf_cannot_hold_are_refused_before_writing(tmp_path, text):
    model = make_model("gpt2-tied")
    out = tmp_path / "x.gguf"
    with pytest.raises(GptlabError, match="CharTokenizer .* cannot be written to GGUF"):
        write_gguf(model, CharTokenizer.from_text(text), out)
    odd = BPETokenizer.train(text, V, pattern=r"\w+|\s+|[^\w\s]+")
    with pytest.raises(GptlabError, match=r"pattern '\\\\w\+\|\\\\s\+\|\[\^\\\\w\\\\s\]\+' has no llama.cpp pre-tokenizer"):
        write_gguf(model, odd, out)
    small = make_model("gpt2-tied").cfg.replace(vocab_size=100)
    with pytest.raises(GptlabError, match="tokenizer has 320 ids but the model's vocab_size is 100"):
        write_gguf(GPT(small), BPETokenizer.train(text, V), out)
    assert list(tmp_path.iterdir()) == []


def test_models_llama_cpp_cannot_run_are_refused(tmp_path, tokenizers):
    cfg = modern(vocab_size=V, context_length=32, emb_dim=32, n_heads=2, n_layers=1, ff_dim=32, qk_norm=True,
                 proj_bias=True)
    with pytest.raises(GptlabError, match=r"cannot be written to GGUF: q/k norms \(qwen3\) with biases"):
        write_gguf(GPT(cfg), tokenizers["gpt2"], tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_llama3_scaling_that_cannot_be_recovered_is_refused(tmp_path, tokenizers):
    """With an 8-wide head only one frequency lies between the plateaus: too few to recover the four numbers."""
    model = make_model("llama-gqa-llama3rope")
    narrow = GPT(model.cfg.replace(n_heads=8, n_kv_heads=2)).eval()
    write_gguf(narrow, tokenizers["llama"], tmp_path / "n.gguf")
    with pytest.raises(GptlabError, match="rope_freqs.weight is not Llama 3's RoPE scaling"):
        load_gguf(tmp_path / "n.gguf")


def test_overwrites_atomically(tmp_path, tokenizers):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    write_gguf(make_model("gpt2-tied"), tokenizers["gpt2"], path)
    assert path.read_bytes()[:4] == b"GGUF" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_tensor_table_reader_agrees_with_gguf_py(exported):
    from gptlab.tokenizer.gguf_vocab import read_gguf_tensors

    _, _, path = exported("qwen3-wide-heads", "q8_0")
    metadata, table = read_gguf_tensors(path)
    reader = gguf.GGUFReader(path)
    assert metadata["general.architecture"] == "qwen3"
    assert [(t.name, list(t.shape), t.type, t.offset) for t in table] == [
        (t.name, [int(n) for n in reversed(t.shape)], int(t.tensor_type), int(t.data_offset)) for t in reader.tensors]


def test_truncated_files_fail_in_one_line(exported, tmp_path):
    _, _, path = exported("gpt2-tied", "f32")
    data = path.read_bytes()
    table_end = min(t.data_offset for t in gguf.GGUFReader(path).tensors)
    for size, message in ((table_end - 40, "tensor table: .*runs past the end|tensor table: needs"),
                          (len(data) - 100, "runs past the end of the file")):
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(data[:size])
        with pytest.raises(GptlabError, match=message) as info:
            load_gguf(cut)
        assert "\n" not in str(info.value)
