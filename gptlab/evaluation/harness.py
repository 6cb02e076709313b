"""A gptlab model as an lm-evaluation-harness model: ``lm_eval``'s three request types, batched.

:class:`GptlabLM` takes a model and its tokenizer as :func:`gptlab.model.load.load_model` returns them
(the command line loads them; this module sits below the model layer and only calls what the model
object offers: its forward pass, ``cfg.context_length`` and ``stream_generate``).

Conventions, as lm_eval's own Hugging Face model has them, so that scores are comparable:

* A context and its continuation are encoded together and split where the context's own encoding
  ends; spaces that end a context move to the continuation (``"Q: 2+2=" + " 4"`` keeps the BPE merge
  of the space with the word). An empty context is replaced by the BOS token (else end-of-text).
* Too long inputs lose tokens from the left; every continuation token is always scored.
* Log-probabilities are taken in float32 over the tokenizer's ids only: a vocabulary padded past
  ``n_vocab`` (Qwen's, for GPU-friendly shapes) must not take probability mass.
* ``loglikelihood_rolling`` cuts a text into disjoint windows of the model's context; the first token
  is predicted from BOS/end-of-text, and the last window is filled with earlier tokens as context.
* With a ``chat_format`` (lm_eval's ``apply_chat_template``, for instruct models), prompts are the
  model's chat template (or prompt style) rendered over lm_eval's messages; a prompt that already
  starts with the BOS token does not get a second one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from gptlab.errors import GptlabError

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256


class EvalTokenizer(Protocol):
    """What the harness needs of a tokenizer (:class:`gptlab.tokenizer.Tokenizer` has all of it)."""

    bos_token: str | None
    prefix_ids: tuple[int, ...]

    @property
    def n_vocab(self) -> int: ...  # noqa: D102

    @property
    def eot_id(self) -> int | None: ...  # noqa: D102

    @property
    def stop_ids(self) -> tuple[int, ...]: ...  # noqa: D102

    def token_id(self, text: str | None) -> int | None: ...  # noqa: D102

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...  # noqa: D102

    def decode(self, ids: Sequence[int]) -> str: ...  # noqa: D102


def prefix_token_id(tokenizer: EvalTokenizer) -> int:
    """The token that stands before a text with no context: BOS when the tokenizer has one, else end-of-text."""
    for candidate in (tokenizer.token_id(tokenizer.bos_token), tokenizer.eot_id, *tokenizer.stop_ids):
        if candidate is not None:
            return candidate
    raise GptlabError("the tokenizer has no BOS or end-of-text token to start a text from")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: Sequence[int], prefix_id: int, max_length: int | None = None) -> float:
    """Perplexity of the token ids ``ids`` under ``model``, each token predicted once.

    The text is read in disjoint chunks of ``max_length`` tokens (default: the model's context length);
    its first token is predicted from ``prefix_id``. Every chunk's input is the ``max_length`` tokens
    that end where the chunk ends, so the last, shorter chunk still sees a full window of earlier
    tokens. The loss is the model's own cross-entropy (``model(inputs, targets)``), with positions that
    are only context set to -100: this is the reference that ``GptlabLM.loglikelihood_rolling`` must match.
    """
    if not ids:
        raise GptlabError("perplexity of an empty text is undefined")
    window = max_length or model.cfg.context_length
    device = _model_device(model)
    full = torch.tensor([prefix_id, *ids], dtype=torch.long, device=device)
    total_nll = 0.0
    for start in range(0, len(ids), window):
        end = min(start + window, len(ids))  # predicts ids[start:end] = full[start + 1 : end + 1]
        first = max(0, end - window)
        inputs = full[first:end]
        targets = full[first + 1 : end + 1].clone()
        targets[: start - first] = -100  # tokens already predicted by the previous chunk: context only
        _, loss = model(inputs[None], targets[None])
        total_nll += float(loss) * (end - start)
    return math.exp(total_nll / len(ids))


class GptlabLM(LM):
    """lm_eval's model interface over a gptlab ``GPT`` and its tokenizer.

    ``batch_size`` sequences go through the model at once (longest first, so that running out of memory
    happens at the start); ``max_length`` caps the tokens per sequence (default: the model's context
    length; worth lowering for models with windows of 32k+ tokens). ``seed`` seeds generation when a
    task asks for sampling.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: EvalTokenizer,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int | None = None,
        chat_format: Any = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise GptlabError(f"--batch-size must be a positive integer, got {batch_size}")
        context = model.cfg.context_length
        if max_length is not None and not 2 <= max_length <= context:
            raise GptlabError(f"--max-length must be in 2..{context} (the model's context length), got {max_length}")
        if max_gen_toks < 1:
            raise GptlabError(f"max_gen_toks must be a positive integer, got {max_gen_toks}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or context
        self.max_gen_toks = max_gen_toks
        self.seed = seed
        self.prefix_id = prefix_token_id(tokenizer)
        # A gptlab.data.chat_format ChatFormat (format_chat(messages) -> prompt text), or None.
        self.chat_format = chat_format
        self.n_vocab = tokenizer.n_vocab  # read once: some tokenizers compute it from their whole vocabulary
        self._device = _model_device(model)

    # ------------------------------------------------------------------ tokens

    def tok_encode(self, text: str, with_prefix: bool = True) -> list[int]:
        """Token ids of ``text``, special-token text included as such (as Hugging Face tokenizers do).

        ``with_prefix`` puts the tokenizer's own prefix first (Llama 3's BOS), as a model expects at the
        start of a text; suffixes are never added, since contexts are cut off the end of longer texts.
        """
        ids = self.tokenizer.encode(text, allowed_special="all")
        prefix = list(self.tokenizer.prefix_ids)
        if not with_prefix or ids[: len(prefix)] == prefix:  # a chat template may write the BOS itself
            return ids
        return [*prefix, *ids]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``(context ids, continuation ids)``: encoded together, split at the end of the context's encoding."""
        if not context:
            cont = self.tok_encode(continuation, with_prefix=False)
            # A continuation that starts with the prefix token already has it as context.
            return (cont[:1], cont[1:]) if cont and cont[0] == self.prefix_id else ([self.prefix_id], cont)
        # Trailing whitespace belongs to the continuation: BPE merges a space with the word after it.
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        whole = self.tok_encode(stripped + continuation)
        n_context = len(self.tok_encode(stripped))
        return whole[:n_context], whole[n_context:]

    def _decode(self, ids: Sequence[int]) -> str:
        # A model whose vocabulary is padded past the tokenizer's could still emit a padding id;
        # it stands for no text.
        return self.tokenizer.decode([i for i in ids if i < self.n_vocab])

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def _score(
        self, pairs: list[tuple[list[int], list[int]]], desc: str, disable_tqdm: bool
    ) -> list[tuple[float, bool]]:
        """``(sum of log-probabilities, greedy?)`` of each continuation after its context (both token ids).

        Sequences are right-padded into batches: with causal attention a real token never sees the
        padding after it, and positions count from the start, so no mask is needed.
        """
        n_vocab = self.n_vocab
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        rows: list[tuple[int, list[int], list[int]]] = []
        for i, (context, continuation) in enumerate(pairs):
            if not context:
                raise GptlabError("internal: a continuation needs at least one context token")
            if len(continuation) > self.max_length:
                raise GptlabError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                                  f"{self.max_length}-token window")
            if not continuation:
                results[i] = (0.0, True)  # nothing to predict: probability 1
                continue
            # The last token is only ever a target; keep the last max_length tokens that are inputs.
            rows.append((i, (context + continuation)[-(self.max_length + 1):-1], continuation))
        rows.sort(key=lambda row: len(row[1]), reverse=True)
        with tqdm(total=len(rows), desc=desc, disable=disable_tqdm) as bar:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                ids = torch.zeros(len(batch), max(len(inputs) for _, inputs, _ in batch), dtype=torch.long)
                # index[r] lists the positions whose logits row r needs (padded by repeating the first).
                index = torch.zeros(len(batch), max(len(cont) for _, _, cont in batch), dtype=torch.long)
                for r, (_, inputs, continuation) in enumerate(batch):
                    ids[r, : len(inputs)] = torch.tensor(inputs)
                    # The logits at position t predict token t + 1: the continuation's tokens are
                    # predicted by the last len(continuation) input positions.
                    first = len(inputs) - len(continuation)
                    index[r] = first
                    index[r, : len(continuation)] = torch.arange(first, len(inputs))
                logits = self._logits_at(ids.to(self._device), index.to(self._device))
                for r, (i, _, continuation) in enumerate(batch):
                    scored = logits[r, : len(continuation), :n_vocab].float()
                    target = torch.tensor(continuation, device=scored.device)
                    logprobs = F.log_softmax(scored, dim=-1)
                    total = float(logprobs.gather(-1, target[:, None]).sum())
                    results[i] = (total, bool((scored.argmax(dim=-1) == target).all()))
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def _logits_at(self, ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, vocab]`` of the model on ``ids`` ``[B, T]`` at the positions ``index`` ``[B, K]`` only.

        The output head over the whole vocabulary (50k-150k ids) at every position costs more than the
        rest of a small model, and scoring needs it only at the continuation's few positions: a hook on
        the final norm hands the head just those rows. A model without ``final_norm`` gets the full
        logits, gathered afterwards.
        """

        def select(hidden: torch.Tensor) -> torch.Tensor:
            return hidden.gather(1, index[..., None].expand(-1, -1, hidden.size(-1)))

        norm = getattr(self.model, "final_norm", None)
        if not isinstance(norm, torch.nn.Module):
            return select(self.model(ids))
        handle = norm.register_forward_hook(lambda _module, _args, hidden: select(hidden))
        try:
            return self.model(ids)
        finally:
            handle.remove()

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log P(continuation | context), is_greedy)`` for each request's ``(context, continuation)``."""
        pairs = [self._encode_pair(*req.args) for req in requests]
        results = self._score(pairs, "loglikelihood", disable_tqdm)
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """log P(text) of each request's ``(text,)``: every token scored once, in disjoint windows."""
        pairs: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for n, req in enumerate(requests):
            ids = self.tok_encode(req.args[0], with_prefix=False)
            # context_len=1: windows do not overlap; make_disjoint_window keeps each window's
            # context from repeating the tokens it predicts.
            for window in get_rolling_token_windows(ids, self.prefix_id, self.max_length, context_len=1):
                pairs.append(make_disjoint_window(window))
                owners.append(n)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._score(pairs, "loglikelihood_rolling", disable_tqdm)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continue each request's context until one of its ``until`` strings, a stop token or ``max_gen_toks``.

        Greedy unless the task's ``gen_kwargs`` ask for sampling (``do_sample`` or a temperature > 0).
        Requests with the same settings are generated together, longest prompt first.
        """
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        settings: dict[tuple, dict[str, Any]] = {}
        for n, req in enumerate(requests):
            options = self._generation_options(req.args[1])
            key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
            groups.setdefault(key, []).append(n)
            settings[key] = options
        with tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm) as bar:
            for key, members in groups.items():
                options = settings[key]
                prompt_room = max(1, self.max_length - options["max_gen_toks"])
                prompts = {n: self.tok_encode(requests[n].args[0])[-prompt_room:] for n in members}
                members.sort(key=lambda n: len(prompts[n]), reverse=True)
                for start in range(0, len(members), self.batch_size):
                    batch = members[start : start + self.batch_size]
                    texts = self._generate([prompts[n] for n in batch], options)
                    for n, text in zip(batch, texts):
                        results[n] = text
                        self.cache_hook.add_partial("generate_until", requests[n].args, text)
                    bar.update(len(batch))
        return results  # type: ignore[return-value]

    def _generation_options(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The settings gptlab's generation understands, from a task's ``gen_kwargs``; others are ignored."""
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        if gen_kwargs.get("do_sample") and temperature == 0.0:
            temperature = 1.0  # do_sample without a temperature samples at 1, as transformers does
        if "do_sample" in gen_kwargs and not gen_kwargs["do_sample"]:
            temperature = 0.0  # do_sample false wins over a temperature, as in transformers
        top_p = gen_kwargs.get("top_p")
        top_k = gen_kwargs.get("top_k")
        return {
            "until": [u for u in until if u],
            "max_gen_toks": max(0, int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))),
            "temperature": temperature,
            "top_p": float(top_p) if top_p is not None and temperature > 0 else None,
            "top_k": int(top_k) if top_k and temperature > 0 else None,
        }

    def _generate(self, prompts: list[list[int]], options: dict[str, Any]) -> list[str]:
        """Generate for a batch of token prompts with gptlab's KV-cached, left-padded generation."""
        until: list[str] = options["until"]
        stop_ids = set(self.tokenizer.stop_ids)
        tokens: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        steps: Iterator[torch.Tensor] = self.model.stream_generate(
            prompts, options["max_gen_toks"], temperature=options["temperature"], top_k=options["top_k"],
            top_p=options["top_p"], seed=self.seed, pad_id=self.prefix_id,
        )
        for step in steps:
            for r, token in enumerate(step.tolist()):
                if done[r]:
                    continue
                if token in stop_ids:
                    done[r] = True
                    continue
                tokens[r].append(token)
                # Decoding the whole answer each step finds an until string that spans tokens.
                if until and any(u in self._decode(tokens[r]) for u in until):
                    done[r] = True
            if all(done):
                break  # leaving the loop closes the generator: no more decode steps
        texts = [self._decode(t) for t in tokens]
        return [_cut_at(text, until) for text in texts]

    # ------------------------------------------------------------------ chat templates

    @property
    def tokenizer_name(self) -> str:
        """What lm_eval records (and keys its request cache on) for the prompt format in use."""
        fmt = self.chat_format
        return f"gptlab-{getattr(fmt, 'name', 'none')}".replace(" ", "-")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template text lm_eval saves with the results (a prompt style's name when there is no template)."""
        if not chat_template or self.chat_format is None:
            return None
        return getattr(self.chat_format, "template", None) or getattr(self.chat_format, "name", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm_eval's messages as the model's prompt; a last assistant message is continued (a prefill)."""
        if self.chat_format is None:
            raise GptlabError("--apply-chat-template: this model has no chat template or prompt style")
        messages = [dict(m) for m in chat_history]
        prefill = ""
        if not add_generation_prompt and messages and messages[-1].get("role") == "assistant":
            prefill = messages.pop()["content"]
        return self.chat_format.format_chat(messages) + prefill

    # ------------------------------------------------------------------ what results record

    def get_model_info(self) -> dict[str, Any]:
        """Facts about the model that lm_eval adds to a results file's ``config``."""
        params = {id(p): p for p in self.model.parameters()}
        return {
            "model_num_parameters": sum(p.numel() for p in params.values()),
            "model_dtype": str(next(self.model.parameters()).dtype),
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }


def _cut_at(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any of the ``until`` strings."""
    cut = min((i for i in (text.find(u) for u in until) if i >= 0), default=len(text))
    return text[:cut]

