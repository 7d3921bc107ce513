"""Code both the workers and the producers import: models, settings, keys, store, voting,
prompts, the LLM gateway, the run's steps, and errors."""

__all__: list[str] = []
