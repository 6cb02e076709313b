"""``gptlab eval``: lm-evaluation-harness tasks (hellaswag, arc, mmlu, or local YAML ones) on a gptlab model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptlab.cli.quantize_cmds import add_quantize_flags, quantize_options
from gptlab.errors import GptlabError

if TYPE_CHECKING:  # pragma: no cover
    from lm_eval.tasks import TaskManager


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` verb (lm_eval itself is imported only when the verb runs)."""
    e = subparsers.add_parser(
        "eval",
        help="score a model on lm-evaluation-harness tasks (hellaswag, arc_easy, mmlu, ... or local YAML tasks)",
        description="Run EleutherAI lm-evaluation-harness tasks on a gptlab model: multiple choice and perplexity "
        "tasks are scored with batched log-likelihoods, generation tasks with gptlab's KV-cached generation. "
        "Needs lm_eval (pip install 'gptlab[eval]'); the tasks' data sets are downloaded by Hugging Face "
        "datasets, or read from local files by tasks of --include-path.",
    )
    e.add_argument("--model", required=True,
                   help="a model folder (run folder or Hugging Face format), a .gguf file, a hub name (gpt2, ...) "
                        "or a preset (random weights)")
    e.add_argument("--tasks", required=True,
                   help="comma-separated lm_eval task or group names (hellaswag,arc_easy,mmlu; globs like arc_* too)")
    e.add_argument("--include-path", metavar="DIR", default=None,
                   help="a folder of extra task YAML files (local tasks over local data files)")
    e.add_argument("--num-fewshot", type=int, metavar="N", default=None,
                   help="few-shot examples per prompt (default: the task's)")
    e.add_argument("--limit", type=float, metavar="N", default=None,
                   help="examples per task: a count, or a fraction below 1 (for quick checks, not for reporting)")
    e.add_argument("--batch-size", type=int, metavar="N", default=8, help="sequences per forward pass (default 8)")
    e.add_argument("--max-length", type=int, metavar="N", default=None,
                   help="most tokens per sequence (default: the model's context length)")
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights dtype (default float32); log-probabilities are always taken in float32")
    add_quantize_flags(e)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    e.add_argument("--seed", type=int, metavar="N", default=None,
                   help="seed for few-shot sampling, data order and sampled generation (default: lm_eval's seeds)")
    e.add_argument("--bootstrap-iters", type=int, metavar="N", default=100000,
                   help="bootstrap resamples for standard errors that need them; 0 skips them (default 100000)")
    e.add_argument("--output-path", metavar="PATH", default=None,
                   help="save the results as lm_eval does: PATH.json is the results file, any other PATH a folder "
                        "that gets results.json (and samples_TASK.jsonl with --log-samples)")
    e.add_argument("--overwrite", action="store_true", help="replace results files that already exist")
    e.add_argument("--log-samples", action="store_true",
                   help="also save every prompt, answer and score (needs --output-path)")
    e.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    e.add_argument("--apply-chat-template", action="store_true",
                   help="put each prompt in the model's chat template (or its folder's prompt style), as instruct "
                        "models are evaluated")
    e.add_argument("--style", default=None,
                   help="with --apply-chat-template: a prompt style (alpaca, phi3, plain, ...) instead of the model's own")
    e.add_argument("--system-instruction", default=None, metavar="TEXT",
                   help="a system message before each prompt (with --apply-chat-template)")
    e.add_argument("--fewshot-as-multiturn", action="store_true",
                   help="give few-shot examples as earlier chat turns (needs --apply-chat-template)")
    e.set_defaults(func=cmd_eval)


def _task_names(text: str) -> list[str]:
    """The names in ``--tasks`` (comma-separated, blanks dropped)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise GptlabError("--tasks: expected comma-separated task names, got none")
    return names


def _output_files(path: str | None) -> tuple[Path | None, Path | None]:
    """``(results file, folder for samples files)`` of ``--output-path`` (a .json file, else a folder)."""
    if path is None:
        return None, None
    out = Path(path).expanduser()
    if out.suffix == ".json":
        return out, out.parent
    if out.exists() and not out.is_dir():
        raise GptlabError(f"--output-path: {out} is a file; give a folder, or a file name ending in .json")
    return out / "results.json", out


def _samples_file(results_file: Path, folder: Path, task: str) -> Path:
    """Where ``--log-samples`` puts a task's samples: beside the results, named after them and the task."""
    stem = "" if results_file.name == "results.json" else f"{results_file.stem}_"
    return folder / f"{stem}samples_{task}.jsonl"


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Raise unless every file of ``paths`` is new, or replaceable with ``overwrite`` (never a folder)."""
    for path in paths:
        if path.is_dir():
            raise GptlabError(f"--output-path: {path} is a folder; give a .json file name or another folder")
        if path.exists() and not overwrite:
            raise GptlabError(f"--output-path: {path} exists; pass --overwrite to replace it")


def _task_manager(names: list[str], include_path: str | None) -> tuple[TaskManager, list[str]]:
    """lm_eval's task index and the task names, globs expanded; unknown names are one error naming them all.

    Indexing lm_eval's thousands of built-in tasks takes seconds: when every name is a task of
    ``--include-path``, the built-in ones are not indexed at all.
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise GptlabError(f"--include-path: {include_path} is not a folder of task YAML files")

    def resolve(manager: TaskManager) -> tuple[list[str], list[str]]:
        found, unknown = [], []
        for name in names:
            if name in manager.all_tasks or Path(name).is_file():  # a name, or a task's YAML file
                found.append(name)
            elif any(c in name for c in "*?[") and manager.match_tasks([name]):
                found += manager.match_tasks([name])
            else:
                unknown.append(name)
        return found, unknown

    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        found, unknown = resolve(local)
        if not unknown:
            return local, found
    manager = TaskManager(include_path=include_path)
    found, unknown = resolve(manager)
    if unknown:
        where = " or in --include-path" if include_path else " (local tasks need --include-path)"
        raise GptlabError(f"--tasks: unknown task(s) {', '.join(unknown)}: not lm_eval tasks{where}")
    return manager, found


def cmd_eval(args: argparse.Namespace) -> int:
    """Handler of ``gptlab eval``."""
    from gptlab.evaluation import require_lm_eval

    require_lm_eval()
    names = _task_names(args.tasks)
    if args.batch_size < 1:
        raise GptlabError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.limit is not None and not args.limit > 0:
        raise GptlabError(f"--limit must be a count >= 1 or a fraction in (0, 1), got {args.limit:g}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise GptlabError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.bootstrap_iters < 0:
        raise GptlabError(f"--bootstrap-iters must be >= 0, got {args.bootstrap_iters}")
    if not args.apply_chat_template:
        for flag, value in (("--style", args.style), ("--system-instruction", args.system_instruction),
                            ("--fewshot-as-multiturn", args.fewshot_as_multiturn)):
            if value:
                raise GptlabError(f"{flag} needs --apply-chat-template")
    results_file, samples_dir = _output_files(args.output_path)
    if args.log_samples and results_file is None:
        raise GptlabError("--log-samples needs --output-path (the folder or file the samples go beside)")
    if results_file is not None:  # refuse before hours of evaluation, not after
        _refuse_existing([results_file], args.overwrite)
        from gptlab.outdir import creation_problem

        problem = creation_problem(results_file.parent)
        if problem is not None:
            raise GptlabError(f"--output-path: cannot write {results_file}: {problem}")
    manager, tasks = _task_manager(names, args.include_path)

    results, run_info = _evaluate(args, manager, tasks)
    samples = results.pop("samples", None)
    if results_file is not None:
        _save(results | run_info, samples if args.log_samples else None, results_file, samples_dir, args.overwrite)
        print(f"gptlab eval: wrote {results_file}", file=sys.stderr)
    if args.json:
        from lm_eval.utils import handle_non_serializable

        print(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    else:
        from lm_eval.utils import make_table

        print(make_table(results))
        if results.get("groups"):
            print(make_table(results, "groups"))
    return 0


def _evaluate(
    args: argparse.Namespace, manager: TaskManager, tasks: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the model and run lm_eval's ``simple_evaluate`` with it.

    Returns lm_eval's results dict, and what lm_eval's ``EvaluationTracker`` adds to a saved results
    file (model name, timing, chat template: its ``general_config_tracker``).
    """
    from dataclasses import asdict

    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from gptlab.evaluation.harness import GptlabLM
    from gptlab.model.device import pick_device
    from gptlab.model.dtypes import parse_dtype
    from gptlab.model.load import load_model

    device = pick_device(args.device)
    model, tokenizer = load_model(args.model, dtype=parse_dtype(args.dtype), **quantize_options(args))
    if getattr(model, "quantization", None) and device.type != "cpu":  # int8/int4 kernels are PyTorch's CPU ones
        if args.device != "auto":
            raise GptlabError(f"--model {args.model}: its int8/int4 weights run on the CPU; use --device cpu, "
                              f"not {args.device}")
        device = pick_device("cpu")
    chat_format = None
    if args.apply_chat_template:
        from gptlab.data.chat_format import chat_format_for

        chat_format = chat_format_for(args.model if Path(args.model).is_dir() else None, args.style,
                                      tokenizer=tokenizer)
    lm = GptlabLM(model.to(device), tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                  seed=args.seed, chat_format=chat_format)
    # lm_eval's defaults are four seeds (0, 1234, 1234, 1234); --seed sets them all, as lm_eval's --seed N does.
    seeds: dict[str, Any] = {}
    if args.seed is not None:
        seeds = {k: args.seed for k in ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")}
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    model_args = {"pretrained": str(args.model), "dtype": args.dtype, "quantize": args.quantize}
    tracker = EvaluationTracker()  # no output_path: it only records; _save writes the files
    try:
        results = lm_eval.simple_evaluate(
            model=lm, model_args=model_args, tasks=tasks, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
            device=str(device), limit=limit, bootstrap_iters=args.bootstrap_iters, log_samples=args.log_samples,
            task_manager=manager, evaluation_tracker=tracker, apply_chat_template=args.apply_chat_template,
            system_instruction=args.system_instruction, fewshot_as_multiturn=args.fewshot_as_multiturn, **seeds,
        )
    except ConnectionError as exc:  # datasets' "couldn't reach the Hub" (offline, or no network)
        raise GptlabError(f"--tasks: a task's data set could not be downloaded ({exc}); run once online, or use "
                          "local tasks with --include-path") from None
    results["config"]["model"] = f"gptlab:{args.model}"  # lm_eval would name the wrapper class
    tracker.general_config_tracker.log_end_time()
    return results, asdict(tracker.general_config_tracker)


def _save(results: dict[str, Any], samples: dict[str, list] | None, results_file: Path, samples_dir: Path,
          overwrite: bool) -> None:
    """Write the results (and samples) as lm_eval's ``EvaluationTracker`` lays them out, each file atomically."""
    from lm_eval.utils import handle_non_serializable, hash_string

    from gptlab.io import atomic_write_text

    def dumps(obj: Any, **kwargs: Any) -> str:
        return json.dumps(obj, default=handle_non_serializable, ensure_ascii=False, **kwargs)

    files = {results_file: None}
    for task, task_samples in (samples or {}).items():
        files[_samples_file(results_file, samples_dir, task)] = task_samples
    _refuse_existing(list(files), overwrite)  # again: the samples files are known only now
    saved = dict(results)
    # lm_eval's per-task fingerprint of what was evaluated (documents, prompts, targets).
    saved["task_hashes"] = {task: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"]
                                                      for s in task_samples))
                            for task, task_samples in (samples or {}).items()}
    atomic_write_text(results_file, dumps(saved, indent=2))
    for path, task_samples in files.items():
        if task_samples is not None:
            atomic_write_text(path, "".join(dumps(_flat_sample(s)) + "\n" for s in task_samples))


def _flat_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample as lm_eval writes it: arguments flattened to named fields, so ``datasets`` can load the file."""
    from lm_eval.utils import sanitize_list

    out = dict(sample)
    out["arguments"] = {f"gen_args_{i}": {f"arg_{j}": value for j, value in enumerate(args)}
                        for i, args in enumerate(sample["arguments"])}
    out["resps"] = sanitize_list(sample["resps"])
    out["filtered_resps"] = sanitize_list(sample["filtered_resps"])
    out["target"] = str(sample["target"])
    return out
