"""``gptlab export --format gguf`` and ``gptlab generate --model FILE.gguf``, and their one-line refusals."""

from __future__ import annotations

import pytest
import torch

from gptlab.app import main

SMALL = ["--data", "the-verdict", "--batch-size", "4", "--block-size", "32",
         "--model-set", "emb_dim=32", "--model-set", "n_heads=2", "--model-set", "n_layers=2",
         "--model-set", "context_length=32", "--eval-batches", "2", "--sample-tokens", "8", "--warmup-steps", "2",
         "--precision", "fp32", "--no-progress", "--max-steps", "2", "--eval-interval", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data) -> dict:
    """Two tiny runs: a llama-nano shape with a trained BPE, and a gpt-nano shape with the char tokenizer."""
    root = tmp_path_factory.mktemp("runs")
    tok_file = root / "bpe.json"
    assert main(["train-tokenizer", "--data", "the-verdict", "--vocab-size", "400", "--out", str(tok_file)]) == 0
    assert main(["pretrain", *SMALL, "--preset", "llama-nano", "--model-set", "n_kv_heads=1",
                 "--model-set", "ff_dim=64", "--tokenizer", str(tok_file), "--out", str(root / "bpe")]) == 0
    assert main(["pretrain", *SMALL, "--preset", "gpt-nano", "--tokenizer", "char", "--out", str(root / "char")]) == 0
    return {"bpe": root / "bpe", "char": root / "char"}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptlab: error: "), err
    return err[0]


def test_export_q8_0_then_generate_from_the_file(runs, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    capsys.readouterr()
    assert main(["export", str(runs["bpe"]), "--format", "gguf", "--outtype", "q8_0", "--out", str(out)]) == 0
    assert "(llama, q8_0)" in capsys.readouterr().out
    import gguf

    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}
    assert main(["generate", "--model", str(out), "--prompt", "I had", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("I had")
    # An f32 export generates exactly the run's own greedy text.
    f32 = tmp_path / "f32.gguf"
    assert main(["export", str(runs["bpe"]), "--format", "gguf", "--out", str(f32)]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(f32), "--prompt", "I had", "--max-new-tokens", "8"]) == 0
    from_file = capsys.readouterr().out
    assert main(["generate", "--model", str(runs["bpe"]), "--prompt", "I had", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == from_file


def test_existing_file_needs_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"GGUF-not-really")
    args = ["export", str(runs["bpe"]), "--format", "gguf", "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    assert "exists; pass --overwrite" in _one_line_error(capsys)
    assert out.read_bytes() == b"GGUF-not-really"
    assert main([*args, "--overwrite"]) == 0
    assert out.stat().st_size > 1000
    other = tmp_path / "notes.gguf"
    other.write_text("my notes")
    assert main(["export", str(runs["bpe"]), "--format", "gguf", "--out", str(other), "--overwrite"]) == 2
    assert "is not a GGUF file" in _one_line_error(capsys)
    assert other.read_text() == "my notes"


@pytest.mark.parametrize("args, name, message", [
    (["--format", "hf", "--outtype", "q8_0"], "hf", "--outtype sets the weight type of a GGUF file; it needs --format gguf"),
    (["--outtype", "bf16"], "hf", "it needs --format gguf"),
    (["--format", "gguf"], "model.bin", "a path ending in .gguf"),
])
def test_flag_errors(runs, tmp_path, capsys, args, name, message):
    out = tmp_path / name
    capsys.readouterr()
    assert main(["export", str(runs["bpe"]), *args, "--out", str(out)]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_char_tokenizer_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "c.gguf"
    capsys.readouterr()
    assert main(["export", str(runs["char"]), "--format", "gguf", "--out", str(out)]) == 2
    assert "CharTokenizer (char) cannot be written to GGUF" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_and_tensor_type_fail_in_one_line(runs, tmp_path, capsys, monkeypatch):
    import gguf

    from gptlab.model import gguf_export
    from gptlab.model.run_folder import load_run

    model, tok = load_run(runs["bpe"])
    monkeypatch.setitem(gguf_export.OUTTYPES, "q4_1", (gguf.LlamaFileType.MOSTLY_Q4_1, gguf.GGMLQuantizationType.Q4_1))
    gguf_export.write_gguf(model, tok, tmp_path / "q41.gguf", outtype="q4_1")
    monkeypatch.setattr(gguf_export, "gguf_arch", lambda cfg: "mamba")
    gguf_export.write_gguf(model, tok, tmp_path / "mamba.gguf")
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "q41.gguf"), "--prompt", "I", "--max-new-tokens", "2"]) == 2
    assert "has type Q4_1; gptlab reads F32, F16, BF16, Q8_0, Q4_0" in _one_line_error(capsys)
    assert main(["generate", "--model", str(tmp_path / "mamba.gguf"), "--prompt", "I", "--max-new-tokens", "2"]) == 2
    assert "architecture 'mamba' is not supported" in _one_line_error(capsys)


def test_loaded_file_is_the_runs_model(runs, tmp_path):
    from gptlab.model import load_model
    from gptlab.model.run_folder import load_run

    out = tmp_path / "m.gguf"
    assert main(["export", str(runs["bpe"]), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    ours, _ = load_run(runs["bpe"])
    theirs, tok = load_model(out)
    ids = torch.tensor([tok.encode("I had always thought Jack Gisburn")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids), ours(ids), atol=1e-5, rtol=0)
