"""The benchmark behind `quorum bench`: Quorum measured side by side with the reference
in-process library (py-ai-toolkit), on a local stack and the LLM simulator.

`quorum.bench.runner` runs it, `quorum.bench.driver` (with `quorum.bench.reference`) runs one
workload in a process of its own, `quorum.bench.workloads` says what runs and
`quorum.bench.report` writes the report.
"""

__all__: list[str] = []
