"""Benchmarks: gptlab's speed against reference libraries, measured in one run (``gptlab bench ...``).

Each benchmark module defines ``register_target(sub)``, adding its ``gptlab bench TARGET`` parser;
:mod:`gptlab.bench.commands` lists the modules.
"""
