"""gptlab: build GPT-style language models from scratch.

The package follows the pipeline of *Build a Large Language Model (From Scratch)*:
text -> :mod:`gptlab.tokenizer` -> token ids -> :mod:`gptlab.data` (windows) -> :mod:`gptlab.model`
-> training -> generation / fine-tuning / serving.
"""

from gptlab.errors import GptlabError

__version__ = "0.1.0"
__all__ = ["GptlabError", "__version__"]
