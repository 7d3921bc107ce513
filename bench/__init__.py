"""The benchmark behind `quorum bench`: Quorum measured side by side with the reference
in-process library (py-ai-toolkit), on a local stack and the LLM simulator.

`bench.runner` runs it, `bench.driver` (with `bench.reference`) runs one workload in a
process of its own, `bench.workloads` says what runs and `bench.report` writes the report.
"""

__all__: list[str] = []
