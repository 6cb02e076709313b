"""Stage 2: data sets, token windows, and prepared (memory-mapped) corpora."""

from gptlab.data.registry import DATASETS, dataset_path, read_text

__all__ = ["DATASETS", "dataset_path", "read_text"]
