"""names: every environment variable and store key in one place, all of them public."""

from __future__ import annotations

import tracer_wrap.names as names


def test_every_public_name_is_exported() -> None:
    public = {key for key, value in vars(names).items()
              if not key.startswith("_") and (key.isupper() or callable(value))
              and getattr(value, "__module__", names.__name__) == names.__name__}
    assert public == set(names.__all__)
    assert {"ENV_EMBEDDER", "ENV_REFERENCE_VENVS"} <= set(names.__all__)
