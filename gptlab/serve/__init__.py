"""Serving: continuous batching (:mod:`.engine`), the OpenAI-compatible HTTP API and chat page (:mod:`.server`)."""
