"""The lab: benchmarks, stream simulation, the demo, the tracer-llm reference runner, datasets
and the simulated LLM. Not part of the request path."""
