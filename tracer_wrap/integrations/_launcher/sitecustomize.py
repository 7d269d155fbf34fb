"""Put first on PYTHONPATH by ``tracer-wrap run``: start tracer_wrap's autolog, then run the
program's own sitecustomize (the one this file shadows), if any. Never stops the program."""

try:
    from tracer_wrap.integrations.zero_code import _chain_sitecustomize, _launched
except Exception:  # tracer_wrap not importable in this interpreter: run the program untouched
    pass
else:
    _launched()
    _chain_sitecustomize(__file__)
