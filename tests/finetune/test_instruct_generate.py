"""Batched answers equal one-at-a-time generation; answers are cut at stop markers; interrupted runs continue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptlab.data.prompts import ALPACA, PHI3, PromptStyle, save_style
from gptlab.errors import GptlabError
from gptlab.finetune.instruct.generate import generate_answers, generate_responses, style_for_model
from gptlab.model.load import load_model

ENTRIES = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "Good morning, my friend.", "output": "Bonjour, mon ami."},
    {"instruction": "What is 2 + 2?", "input": "", "output": "4"},
    {"instruction": "Give a synonym.", "input": "happy", "output": "joyful"},
    {"instruction": "Summarize the text in one short sentence please.", "input": "A long text.", "output": "Text."},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_gpt_folder):
    return Path(tiny_gpt_folder(tmp_path_factory.mktemp("gen-model"), seed=1, context_length=128))


def reference_answer(model, tok, style, entry, max_new):
    """One prompt alone through model.generate (greedy), decoded and cut: what a batch must reproduce."""
    ids = tok.encode_ordinary(style.format(entry["instruction"], entry["input"]))
    new = model.generate([ids], max_new, eos_id=tok.eot_id)[0]
    return style.cut(tok.decode(new)), tok.decode(new)


def test_batched_equals_one_at_a_time(tmp_path, model_dir):
    out = tmp_path / "r.json"
    summary = generate_responses(str(model_dir), ENTRIES, out, batch_size=3, max_new_tokens=12, progress=False,
                                 log=lambda m: None)
    assert summary == {"out": str(out), "total": 5, "resumed": 0, "generated": 5}
    got = json.loads(out.read_text())
    model, tok = load_model(model_dir)
    for entry, result in zip(ENTRIES, got):
        assert {k: result[k] for k in entry} == entry  # the reference stays beside the answer
        assert result["model_response"] == reference_answer(model, tok, ALPACA, entry, 12)[0]


def test_cut_at_the_next_prompt_marker(model_dir):
    model, tok = load_model(model_dir)
    style = PromptStyle("t", "Q: {instruction}\nA:", "Q: {instruction}\nA:", ())
    _, full = reference_answer(model, tok, style, {"instruction": "Name a color.", "input": ""}, 10)
    assert len(full.strip()) > 8
    # Make a piece of what the model really writes the next prompt marker: the answer stops before it.
    marker = full[4:9]
    cut_style = PromptStyle("t", style.template, style.template_no_input, (marker,))
    answer = generate_answers(model, tok, cut_style, [style.format("Name a color.")], max_new_tokens=10)[0]
    assert answer == full[: full.find(marker)].strip()


def test_interrupted_run_continues(tmp_path, model_dir):
    out = tmp_path / "r.json"
    generate_responses(str(model_dir), ENTRIES, out, batch_size=2, max_new_tokens=6, progress=False, log=lambda m: None)
    complete = json.loads(out.read_text())
    # As an interrupted run leaves it: some entries answered, others not yet.
    partial = [dict(e) for e in complete]
    for i in (1, 4):
        del partial[i]["model_response"]
    out.write_text(json.dumps(partial))
    summary = generate_responses(str(model_dir), ENTRIES, out, batch_size=2, max_new_tokens=6, progress=False,
                                 log=lambda m: None)
    assert (summary["resumed"], summary["generated"]) == (3, 2)
    assert json.loads(out.read_text()) == complete
    # An answers file for other entries is not silently mixed in.
    with pytest.raises(GptlabError, match="different entries"):
        generate_responses(str(model_dir), ENTRIES[:2], out, progress=False, log=lambda m: None)
    summary = generate_responses(str(model_dir), ENTRIES[:2], out, max_new_tokens=6, overwrite=True,
                                 progress=False, log=lambda m: None)
    assert summary["generated"] == 2


def test_style_comes_from_the_model_folder(tmp_path, model_dir):
    assert style_for_model(str(model_dir)) == ALPACA  # no prompt_style.json: Alpaca
    folder = tmp_path / "m"
    folder.mkdir()
    save_style(PHI3, folder)
    assert style_for_model(str(folder)) == PHI3
    assert style_for_model(str(folder), "alpaca") == ALPACA  # an explicit --style wins


def test_bad_generation_settings(tmp_path, model_dir):
    with pytest.raises(GptlabError, match="batch-size"):
        generate_responses(str(model_dir), ENTRIES, tmp_path / "x.json", batch_size=0, progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(GptlabError, match="not readable JSON"):
        generate_responses(str(model_dir), ENTRIES, bad, progress=False, log=lambda m: None)


def test_prompt_and_answer_longer_than_the_context(model_dir):
    # 128-token context: a ~110-token prompt and 40 new tokens slide through the window, as in the book.
    model, tok = load_model(model_dir)
    prompt = ALPACA.format("Repeat: " + "word " * 80)
    assert 100 < len(tok.encode_ordinary(prompt)) < 128
    answers = generate_answers(model, tok, PromptStyle("none", "{instruction}", "{instruction}", ()), [prompt, "Hi"],
                               max_new_tokens=40)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_seeded_sampling_does_not_depend_on_the_batch(model_dir):
    """Each prompt samples from its own generator seeded with `seed`: alone or at any batch position, same answer."""
    model, tok = load_model(model_dir)
    prompts = [ALPACA.format(e["instruction"], e["input"]) for e in ENTRIES]
    options = dict(max_new_tokens=10, temperature=1.0, top_k=50, seed=7)
    alone = generate_answers(model, tok, ALPACA, [prompts[0]], **options)[0]
    assert alone != generate_answers(model, tok, ALPACA, [prompts[0]], **{**options, "seed": 8})[0]
    assert generate_answers(model, tok, ALPACA, prompts[:3], **options)[0] == alone
    assert generate_answers(model, tok, ALPACA, [prompts[4], prompts[2], prompts[0]], **options)[2] == alone


def test_sampled_answers_do_not_depend_on_batch_size_or_resuming(tmp_path, model_dir):
    options = dict(max_new_tokens=8, temperature=1.0, seed=5, progress=False, log=lambda m: None)
    one = tmp_path / "one.json"
    generate_responses(str(model_dir), ENTRIES, one, batch_size=1, **options)
    three = tmp_path / "three.json"
    generate_responses(str(model_dir), ENTRIES, three, batch_size=3, **options)
    assert json.loads(three.read_text()) == json.loads(one.read_text())
    # Interrupted after some answers: the rest, generated in other batches, come out the same.
    partial = json.loads(one.read_text())
    for i in (0, 3):
        del partial[i]["model_response"]
    resumed = tmp_path / "resumed.json"
    resumed.write_text(json.dumps(partial))
    generate_responses(str(model_dir), ENTRIES, resumed, batch_size=2, **options)
    assert json.loads(resumed.read_text()) == json.loads(one.read_text())


@pytest.mark.parametrize("settings, message", [
    ({"temperature": -1.0}, "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
    ({"temperature": float("nan")}, "--temperature must be a finite number >= 0"),
    ({"top_k": 0}, "--top-k must be a positive integer, got 0"),
    ({"max_new_tokens": -1}, "--max-new-tokens must be positive, got -1"),
])
def test_bad_sampling_settings_name_the_flag(tmp_path, settings, message):
    # Checked before the model is loaded: "no-such-model" would fail with a message of its own.
    with pytest.raises(GptlabError) as info:
        generate_responses("no-such-model", ENTRIES, tmp_path / "x.json", progress=False, **settings)
    assert str(info.value).startswith(message)
    assert not (tmp_path / "x.json").exists()


def test_unwritable_out_is_one_line_before_the_model_loads(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    cases = [
        (blocker / "r.json", f"--out {blocker / 'r.json'}: cannot create the folder {blocker}: {blocker} is a file"),
        (tmp_path, f"--out {tmp_path}: is a folder; expected the path of a JSON file"),
    ]
    if Path("/proc/self").is_dir():  # Linux: nothing can be created under /proc
        cases.append((Path("/proc/no-such/r.json"),
                      "--out /proc/no-such/r.json: cannot create the folder /proc/no-such (No such file or directory)"))
    for out, message in cases:
        with pytest.raises(GptlabError) as info:
            generate_responses("no-such-model", ENTRIES, out, progress=False, log=lambda m: None)
        assert str(info.value) == message


def test_write_failure_mid_run_names_out(tmp_path, model_dir, monkeypatch):
    import gptlab.finetune.instruct.generate as gen

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gen, "atomic_write_text", full_disk)
    out = tmp_path / "r.json"
    with pytest.raises(GptlabError, match=r"^--out .*r\.json: cannot write it \(No space left on device\)$"):
        generate_responses(str(model_dir), ENTRIES[:1], out, max_new_tokens=2, progress=False, log=lambda m: None)


@pytest.mark.parametrize("content", [
    ENTRIES,  # a data file: entries without answers
    {"summary": {}, "entries": []},  # the scores of instruct eval
    {"format": "gptlab-run"},  # a run's config.json
])
def test_files_of_other_commands_are_never_replaced(tmp_path, content):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(content))
    for overwrite in (False, True):
        with pytest.raises(GptlabError, match="not an answers file of gptlab instruct generate.*even with --overwrite"):
            generate_responses("no-such-model", ENTRIES, other, overwrite=overwrite, progress=False)
    assert json.loads(other.read_text()) == content


def test_the_data_file_is_never_the_output(tmp_path):
    data = tmp_path / "data.json"
    answered = [dict(e, model_response="old") for e in ENTRIES]  # even one that looks like an answers file
    data.write_text(json.dumps(answered))
    for overwrite in (False, True):
        with pytest.raises(GptlabError, match="is the --data file"):
            generate_responses("no-such-model", ENTRIES, data, overwrite=overwrite, progress=False, data_path=data)
    assert json.loads(data.read_text()) == answered
