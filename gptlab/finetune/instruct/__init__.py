"""Instruction fine-tuning (the book's chapter 7): data, collate, training, generation and evaluation.

* :mod:`.data` – JSON/JSONL instruction files, checks, the 85/10/5 split.
* :mod:`.collate` – encoding with a prompt style, the padded/shifted/masked batches, a resumable sampler.
* :mod:`.train` – fine-tuning on the pretraining trainer (full or LoRA).
* :mod:`.generate` – batched, resumable answers for a test set.
* :mod:`.metrics`, :mod:`.judge`, :mod:`.evaluate` – exact match, token F1, ROUGE-L and an LLM judge.
"""
