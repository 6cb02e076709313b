"""The one exception type that means "the user gave us something we cannot use".

The CLI prints a :class:`GptlabError` as a single line and exits with code 2; anything else is a bug
and keeps its traceback. Library callers can catch it like any ``ValueError``.
"""


class GptlabError(ValueError):
    """Bad input: a file, field, flag or value that is not what gptlab expected.

    The message names the offending thing and what was expected, in one line.
    """
