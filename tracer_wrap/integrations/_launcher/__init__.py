"""The launcher directory put first on PYTHONPATH by ``tracer-wrap run`` (see sitecustomize.py)."""
