"""The fitted router: a linear surrogate, its acceptor score and the gate's certified thresholds.

A router is plain numpy arrays plus a JSON manifest. Saving writes ``.npz`` (no pickle) and the
manifest with the array file's SHA-256; loading checks that hash before reading the arrays and
never unpickles, so a router file cannot run code. Serving one embedded input is a 77x384
matrix-vector product and a softmax: a few microseconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, RouterLoadError
from .gate import Certificate

__all__ = ["Decision", "Router"]

FORMAT = "tracer_wrap.linear-softmax.v1"


@dataclass(frozen=True)
class Decision:
    """What the router says about one input.

    ``label`` is the surrogate's answer; ``local`` says whether the gate accepts it (answer
    locally) or defers to the LLM; ``score`` is the acceptor score compared with ``threshold``.
    """

    label: str | None
    local: bool
    score: float
    threshold: float | None
    reason: str = ""


class Router:
    """Surrogate weights, label names and per-target certificates; ``target`` picks the one served.

    Build routers with :func:`tracer_wrap.model.fit.fit_router`; the constructor only stores arrays.
    """

    def __init__(
        self,
        weights: np.ndarray,
        bias: np.ndarray,
        labels: Sequence[str],
        certificates: Mapping[float, Certificate],
        *,
        target: float,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.labels = list(labels)
        self.certificates = dict(certificates)
        k = len(self.labels)
        if self.weights.ndim != 2 or self.weights.shape[0] != k or self.bias.shape != (k,):
            raise ConfigError("weights, bias and labels disagree in size")
        self.info = dict(info or {})
        self.target = target
        self._labels_array = np.array(self.labels, dtype=object)

    # -- serving -----------------------------------------------------------------------------

    @property
    def target(self) -> float:
        return self._target

    @target.setter
    def target(self, value: float) -> None:
        cert = self.certificate_for(value)
        self._target = float(value)
        self._threshold = np.inf if cert.threshold is None else cert.threshold
        self._cert = cert

    @property
    def threshold(self) -> float | None:
        """The certified threshold of the served target (None: the gate refused)."""
        return self._cert.threshold

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def certificate_for(self, target: float) -> Certificate:
        """The certificate of ``target``, or of the nearest stricter target that was certified."""
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"target must be in (0, 1], got {target!r}")
        if target in self.certificates:
            return self.certificates[target]
        stricter = sorted(t for t in self.certificates if t >= target)
        for t in stricter:
            if self.certificates[t].certified:
                return self.certificates[t]
        return Certificate(target, None, 0.0, None, 0, None,
                           f"target {target} was not among the fitted targets")

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted class index and acceptor score (surrogate probability) for each row."""
        logits = np.asarray(vectors, dtype=np.float32) @ self.weights.T + self.bias
        top = logits.argmax(axis=1)
        shifted = logits - logits[np.arange(len(top)), top][:, None]
        prob = 1.0 / np.exp(shifted).sum(axis=1)
        return top, prob

    def route(self, text: str | None, vector: np.ndarray) -> Decision:
        """Decision for one input: its text (None when only the embedding is known, as in the
        sidecar's route-by-embedding) and its embedding, shape ``(dim,)``."""
        return self.route_many(None if text is None else [text], np.asarray(vector)[None, :])[0]

    def route_many(self, texts: Sequence[str] | None, vectors: np.ndarray) -> list[Decision]:
        """Decisions for a batch: ``texts`` (or None) and their embeddings, shape ``(n, dim)``."""
        top, prob = self.scores(vectors)
        threshold = self._cert.threshold
        refused = self._cert.reason or "score below threshold"
        return [
            Decision(self.labels[t], bool(p >= self._threshold), float(p), threshold,
                     "accepted" if p >= self._threshold else refused)
            for t, p in zip(top, prob)
        ]

    def frontier(self) -> list[dict[str, Any]]:
        """One row per fitted target: certified threshold, coverage and agreement on calibration."""
        return [asdict(self.certificates[t]) for t in sorted(self.certificates)]

    # -- persistence ---------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """Everything about this router except its arrays (JSON-serialisable)."""
        import sklearn

        return {
            "format": FORMAT,
            "labels": self.labels,
            "target": self.target,
            "certificates": self.frontier(),
            **self.info,
            "versions": {"numpy": np.__version__, "scikit-learn": sklearn.__version__,
                         "python": platform.python_version()},
        }

    def to_bytes(self) -> tuple[bytes, dict[str, Any]]:
        """The array file (``.npz`` bytes, no pickle) and the manifest recording its SHA-256."""
        buf = io.BytesIO()
        np.savez(buf, weights=self.weights, bias=self.bias)
        data = buf.getvalue()
        return data, dict(self.manifest(), sha256=hashlib.sha256(data).hexdigest(),
                          saved_at=time.time())

    @classmethod
    def from_bytes(cls, data: bytes, manifest: Mapping[str, Any], *,
                   expected_sha256: str | None = None, target: float | None = None,
                   source: str = "router") -> Router:
        """A router from :meth:`to_bytes` output; RouterLoadError when anything is off.

        The hash of ``data`` must match ``expected_sha256`` (when given, e.g. from the store's
        record) and the manifest's before the arrays are read, with ``allow_pickle=False``.
        ``source`` names the router in error messages.
        """
        try:
            actual = hashlib.sha256(data).hexdigest()
            if manifest.get("format") != FORMAT:
                raise RouterLoadError(f"{source}: unknown router format {manifest.get('format')!r}")
            for expected in (manifest.get("sha256"), expected_sha256):
                if expected is not None and expected != actual:
                    raise RouterLoadError(f"{source}: content hash mismatch, refusing to load")
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                weights, bias = arrays["weights"], arrays["bias"]
            certs = {float(c["target"]): Certificate(**c) for c in manifest["certificates"]}
            info = {k: v for k, v in manifest.items()
                    if k not in {"format", "labels", "target", "certificates"}}
            return cls(weights, bias, manifest["labels"], certs,
                       target=manifest["target"] if target is None else target, info=info)
        except RouterLoadError:
            raise
        except Exception as exc:
            raise RouterLoadError(f"cannot load router {source!r}: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write ``path`` (``.npz``) and ``path`` with suffix ``.json``; return the manifest.

        Each file is written to a temporary name and renamed, so a reader sees the old file or the
        new one, never half of one. The manifest records the array file's SHA-256.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data, manifest = self.to_bytes()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        _atomic_write_text(path.with_suffix(".json"), json.dumps(manifest, indent=1))
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expected_sha256: str | None = None,
             target: float | None = None) -> Router:
        """Load a router saved by :meth:`save`; RouterLoadError when anything is off.

        The array file's hash must match ``expected_sha256`` (when given, e.g. from the store's
        record) and the manifest's; arrays are read with ``allow_pickle=False``.
        """
        path = Path(path)
        try:
            manifest = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            data = path.read_bytes()
        except Exception as exc:
            raise RouterLoadError(f"cannot load router {str(path)!r}: {exc}") from exc
        return cls.from_bytes(data, manifest, expected_sha256=expected_sha256, target=target,
                              source=str(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
