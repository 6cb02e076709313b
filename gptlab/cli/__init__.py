"""The command-line verbs: one module per stage, each a thin layer of argument parsing over the library.

Each module has a ``register(subparsers)`` function adding its verbs; :mod:`gptlab.app` builds the
``gptlab`` parser from them (and from :mod:`gptlab.bench.commands`) and turns a
:class:`gptlab.errors.GptlabError` into one line on stderr and exit code 2.
"""
