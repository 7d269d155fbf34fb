"""The operator surface: the ``tracer-wrap`` command, the HTML report and the HTTP sidecar.

The library never imports these at import time.
"""
