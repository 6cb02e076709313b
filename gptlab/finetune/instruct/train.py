"""Instruction fine-tuning on the pretraining trainer: a model, a data set and a prompt style in; a run folder out.

The run folder is an ordinary gptlab run (``config.json``, ``metrics.jsonl``, ``loss.png``,
``checkpoints/``), so ``gptlab generate --model RUN`` and :func:`gptlab.model.load.load_model` use it
like any other, plus ``prompt_style.json`` (the style generation and serving reuse) and ``data/``
(the train/test/val split as JSON, ready for ``gptlab instruct generate --data RUN/data/test.json``).
With LoRA, checkpoints hold the merged weights; the adapters themselves are in each checkpoint's state
(for resuming) and exported at the end into ``RUN/adapter/``.

Chat data (entries ``{"messages": [...]}``) is rendered with a chat template instead of a prompt
style: the model tokenizer's own ``chat_template``, or ``InstructConfig.chat_template`` (a file or a
template string). The loss then covers the assistant turns only, and the run folder holds the
template as ``chat_template.jinja`` instead of ``prompt_style.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from gptlab.data.prompts import get_style, save_style
from gptlab.errors import GptlabError
from gptlab.finetune.instruct.collate import (
    InstructBatches,
    chat_special_tokens,
    encode_chat_example,
    encode_example,
    fixed_batches,
)
from gptlab.finetune.instruct.data import SPLITS, is_chat_data, load_examples, split_examples
from gptlab.io import atomic_write_text
from gptlab.model.dropout import set_dropout
from gptlab.model.load import load_model
from gptlab.model.run_folder import checkpoint_dir, load_state, read_run_config
from gptlab.train.config import TrainConfig
from gptlab.train.task import TrainTask, load_trainable_state

TASK_NAME = "instruct"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass
class InstructConfig:
    """What is fine-tuned on what (saved in the run's ``config.json`` under ``task``; fixed on resume)."""

    data: str = "instruction-data"
    model: str = "gpt2-medium"  # run folder, Hugging Face folder, hub name or preset
    style: str = "alpaca"  # alpaca | phi3 | template file | template string
    chat_template: str | None = None  # for chat data: a Jinja file or string (None: the tokenizer's own)
    mask_prompt: bool = False
    max_length: int = 0  # truncate examples to this many tokens (0 = the model's context length)
    split_seed: int | None = None  # None: the book's unshuffled 85/10/5 split
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_targets: str = "attn,ff"  # not the head: GPT-2 and the llama-* presets tie it to the token embedding
    lora_dropout: float = 0.0
    drop_rate: float | None = None  # override the model's dropout (None: keep the model's own)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstructConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored, e.g. the task's name)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# The book's chapter 7 settings where they differ from pretraining's defaults: AdamW(lr=5e-5,
# weight_decay=0.1) with torch's default betas, constant rate, no clipping, batch 8, 2 epochs, seed 123.
BOOK_TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 8,
    "lr": 5e-5,
    "min_lr": 5e-5,
    "warmup_steps": 0,
    "weight_decay": 0.1,
    "optimizer": "adamw",
    "beta1": 0.9,
    "beta2": 0.999,
    "grad_clip": 0.0,
    "epochs": 2.0,
    "time_budget": "",
    "eval_interval": 20,
    "eval_batches": 1_000_000,  # all validation batches (55 examples: 7 batches)
    "eval_train_batches": 5,  # the book measures the training loss on 5 batches
    "sample_tokens": 60,
    "seed": 123,
}


def build_task(icfg: InstructConfig, tcfg: TrainConfig, run_dir: Path, log: Callable[[str], None] = print) -> TrainTask:
    """Load the model, tokenizer and data; encode and batch; describe how to save. Writes the split into ``run_dir/data``."""
    style = get_style(icfg.style)
    examples = load_examples(icfg.data)
    parts = split_examples(examples, seed=icfg.split_seed)
    if not parts["val"]:
        raise GptlabError(f"--data {icfg.data}: {len(examples)} entries leave no validation examples")

    # Loaded here to learn the context length and tokenizer; build_model() hands this copy to the
    # trainer the first time and loads again after that (a resume rebuilds the same starting point).
    probe, tokenizer = load_model(icfg.model)
    chat = is_chat_data(examples)
    pad_id = tokenizer.eot_id
    if chat:
        template, template_name = resolve_chat_template(icfg, tokenizer)
        if pad_id is None:
            # Chat targets never include padding, so any id pads; prefer the tokenizer's own pad or end token.
            candidates = (tokenizer.token_id(tokenizer.pad_token), tokenizer.token_id(tokenizer.eos_token))
            pad_id = next((i for i in candidates if i is not None), 0)
    elif pad_id is None:
        raise GptlabError(f"--model {icfg.model}: its tokenizer has no <|endoftext|> token to end answers with")
    context = probe.cfg.context_length
    max_length = icfg.max_length or context
    if max_length > context:
        raise GptlabError(f"--max-length {max_length} exceeds the model's context length {context}")
    loaded = [probe]

    if chat:
        index = {id(e): i for i, e in enumerate(examples)}
        specials = chat_special_tokens(tokenizer)

        def encode(entry: dict[str, Any]):
            try:
                return encode_chat_example(tokenizer, template, entry, specials, name=template_name)
            except GptlabError as exc:
                raise GptlabError(f"--data {icfg.data}: entry {index[id(entry)]}: {exc}") from None
    else:
        def encode(entry: dict[str, Any]):
            return encode_example(tokenizer, style, entry)

    encoded = {name: [encode(e) for e in parts[name]] for name in SPLITS}
    too_long = sum(len(ids) > max_length for ids, _ in encoded["train"])
    if too_long:
        log(f"note: {too_long} of {len(encoded['train'])} training examples are longer than {max_length} tokens "
            f"and are truncated")
    # Under torchrun each rank takes its own share of every global batch (the trainer sets up the group
    # later; the launcher's environment already says who is who).
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    sampler = InstructBatches(encoded["train"], tcfg.batch_size, tcfg.seed, pad_id, icfg.mask_prompt, max_length,
                              rank=rank, world_size=world)
    val_batches = fixed_batches(encoded["val"], tcfg.batch_size, pad_id, icfg.mask_prompt, max_length,
                                tcfg.eval_batches)
    train_eval = fixed_batches(encoded["train"], tcfg.batch_size, pad_id, icfg.mask_prompt, max_length,
                               tcfg.eval_train_batches) if tcfg.eval_train_batches else []

    def build_model() -> torch.nn.Module:
        model = loaded.pop() if loaded else load_model(icfg.model)[0]
        if icfg.drop_rate is not None:
            if not 0.0 <= icfg.drop_rate < 1.0:
                raise GptlabError(f"--drop-rate must be in [0, 1), got {icfg.drop_rate}")
            set_dropout(model, icfg.drop_rate)  # attention's own dropout too, not only the nn.Dropout layers
        if icfg.lora_rank:
            from gptlab.finetune.lora import apply_lora

            apply_lora(model, icfg.lora_rank, icfg.lora_alpha, icfg.lora_targets, icfg.lora_dropout)
            _check_exportable(model)
        return model.float().train()

    # Files a user (and a resume) needs besides what the trainer writes.
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        atomic_write_text(run_dir / "data" / f"{name}.json", json.dumps(parts[name], indent=2, ensure_ascii=False))
    if chat:
        atomic_write_text(run_dir / CHAT_TEMPLATE_FILE, template)
    else:
        save_style(style, run_dir)
    info = {**icfg.to_dict(), "sizes": {k: len(v) for k, v in parts.items()}}
    return TrainTask(
        name=TASK_NAME,
        build_model=build_model,
        tokenizer=tokenizer,
        sampler=sampler,
        val_batches=val_batches,
        train_eval_batches=train_eval,
        export_weights=merged_weights if icfg.lora_rank else None,
        run_info=info,
    )


def resolve_chat_template(icfg: InstructConfig, tokenizer) -> tuple[str, str]:
    """``(template, name)`` for chat data: ``icfg.chat_template`` (a file, else a string), else the tokenizer's.

    Raises a one-line :class:`GptlabError` when neither exists, saying how to give one.
    """
    given = icfg.chat_template
    if given:
        path = Path(given).expanduser()
        if "{" not in given and path.is_file():
            try:
                return path.read_text(encoding="utf-8"), path.name
            except (OSError, UnicodeDecodeError) as exc:
                raise GptlabError(f"--chat-template {given}: cannot read ({exc})") from None
        if "{%" in given or "{{" in given:
            return given, "--chat-template"
        raise GptlabError(f"--chat-template {given!r}: no such file, and not a Jinja template string")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template, f"--model {icfg.model} chat template"
    raise GptlabError(f"--data {icfg.data} holds chat entries ('messages') but the tokenizer of --model {icfg.model} "
                      "has no chat template; pass one with --chat-template FILE (a Jinja chat template)")


def chat_sample_prompt(template: str, template_name: str, messages: list[dict[str, Any]], tokenizer) -> str:
    """The conversation before its first assistant turn, rendered with the generation prompt (the sample's prompt)."""
    from gptlab.tokenizer.chat_template import render_chat

    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
    return render_chat(template, messages[:first] or messages[:1], add_generation_prompt=True,
                       special_tokens=chat_special_tokens(tokenizer), name=template_name)


def _check_exportable(model: torch.nn.Module) -> None:
    """Refuse LoRA on a layer whose weight is tied to another (merging would change both)."""
    from gptlab.finetune.lora import lora_layers

    params = dict(model.named_parameters(remove_duplicate=False))
    for name, layer in lora_layers(model):
        ptr = layer.weight.untyped_storage().data_ptr()
        tied = [n for n, p in params.items() if p.untyped_storage().data_ptr() == ptr and not n.startswith(name + ".")]
        if tied:
            raise GptlabError(
                f"--lora-targets: {name} shares its weight with {tied[0]}; leave it out (e.g. --lora-targets attn,ff)"
            )


def merged_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with every LoRA update folded in, under the plain model's names."""
    from gptlab.finetune.lora import lora_layers
    from gptlab.train.checkpoint import model_state_for_saving

    out = {k: v for k, v in model_state_for_saving(model).items() if ".lora_" not in k}
    with torch.no_grad():
        for name, layer in lora_layers(model):
            if not layer.merged:
                out[f"{name}.weight"] = (layer.weight + layer.delta_weight().to(layer.weight.dtype)).detach().cpu().contiguous()
    return out


def instruct_train_config(overrides: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """The book's fine-tuning defaults < a config file < command-line overrides, checked."""
    from gptlab.train.config import config_from_dict, load_config_file

    values: dict[str, Any] = dict(BOOK_TRAIN_DEFAULTS)
    if config_file:
        values.update(load_config_file(config_file))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    if "min_lr" not in given and "min_lr" not in (load_config_file(config_file) if config_file else {}):
        values["min_lr"] = values["lr"]  # a new --lr alone keeps the rate constant, as the book's
    cfg = config_from_dict(values, source=str(config_file) if config_file else "command line")
    cfg.validate()
    return cfg


def finetune(
    icfg: InstructConfig,
    tcfg: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_eval: Callable[[dict], bool | None] | None = None,
    overwrite: bool = False,
):
    """Start an instruction fine-tuning run; returns the trainer's :class:`RunResult`.

    A non-empty ``tcfg.out`` is refused unless ``overwrite`` (then a previous run there is replaced).
    """
    from gptlab.train.trainer import pretrain

    run_dir = Path(tcfg.out) if tcfg.out else Path("runs") / f"instruct-{time.strftime('%Y%m%d-%H%M%S')}"
    tcfg.out = str(run_dir)
    tcfg.data = icfg.data

    def make_task(run_dir: Path):
        # Called by pretrain once it has claimed the run folder: the task writes its data splits there.
        task = build_task(icfg, tcfg, run_dir, log)
        if not tcfg.sample_prompt:
            first = json.loads((run_dir / "data" / "val.json").read_text(encoding="utf-8"))[0]
            if "messages" in first:
                template = (run_dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
                tcfg.sample_prompt = chat_sample_prompt(template, CHAT_TEMPLATE_FILE, first["messages"],
                                                        task.tokenizer)
            else:
                tcfg.sample_prompt = get_style(icfg.style).format(first["instruction"], first.get("input") or "")
        return task

    result = pretrain(tcfg, progress=progress, log=log, on_eval=on_eval, task=make_task, overwrite=overwrite)
    _finish(run_dir, icfg)
    return result


def resume_finetune(
    run_dir: str | os.PathLike,
    overrides: dict[str, Any],
    progress: bool = True,
    log: Callable[[str], None] = print,
):
    """Continue an instruction run from its newest checkpoint (stop conditions and hardware may change)."""
    from gptlab.train.setup import resolve_run_config
    from gptlab.train.trainer import pretrain

    run_dir = Path(run_dir)
    tcfg, _ = resolve_run_config(overrides, None, str(run_dir))
    task_info = read_run_config(run_dir).task  # checked there: a dict, or None for a pretraining run
    if task_info is None or task_info.get("name") != TASK_NAME:
        raise GptlabError(f"{run_dir}: not an instruction fine-tuning run (use gptlab pretrain --resume)")
    icfg = InstructConfig.from_dict(task_info)
    if (run_dir / CHAT_TEMPLATE_FILE).is_file():
        icfg.chat_template = str(run_dir / CHAT_TEMPLATE_FILE)  # the run's own copy, even if the original moved
    task = build_task(icfg, tcfg, run_dir, log)
    result = pretrain(tcfg, resume=str(run_dir), progress=progress, log=log, task=task)
    _finish(run_dir, icfg)
    return result


def _finish(run_dir: Path, icfg: InstructConfig) -> None:
    """After training with LoRA: the best checkpoint's adapter alone, in ``RUN/adapter`` (small, shareable)."""
    if not icfg.lora_rank:
        return
    from gptlab.finetune.lora import apply_lora, save_adapter

    try:
        best = checkpoint_dir(run_dir, "best")
    except GptlabError:
        return
    model, _ = load_model(icfg.model)
    apply_lora(model, icfg.lora_rank, icfg.lora_alpha, icfg.lora_targets, icfg.lora_dropout)
    load_trainable_state(model, load_state(best)["trainable"])
    save_adapter(model, run_dir / "adapter", base={"model": icfg.model})
