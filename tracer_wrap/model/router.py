"""The fitted router: linear surrogates, their acceptor scores and the gate's certified thresholds.

A router holds up to two surrogates over the same labels, fitted and certified together:

* the **text** surrogate (fused): word and character n-grams of the input text plus its embedding
  in one linear softmax model (:mod:`tracer_wrap.model.features`). Used whenever the text is known.
* the **embedding** surrogate: a linear softmax model on the embedding alone, with certificates of
  its own, so the guarantee also holds where only a vector is known (the HTTP sidecar's
  route-by-embedding). Routers fitted without texts have only this one.

Each carries an acceptor (:mod:`tracer_wrap.model.acceptor`) and one certificate per target; the
served target picks a threshold per label (the same one for all labels under the ``average``
guarantee). An acceptor may also score the input's trust margin, its nearness to the training
traces of the label answered against those of other labels (:mod:`tracer_wrap.model.trust`):
the router then holds the label prototypes it is measured against, ~50 microseconds more per
input. A router is plain numpy arrays plus a JSON manifest. Saving writes ``.npz`` (no
pickle) and the manifest with the array file's SHA-256; loading checks that hash before reading
the arrays and never unpickles, so a router file cannot run code. Serving one embedded input is a
77x384 matrix-vector product and a softmax, a few microseconds; from text, the n-grams add ~0.2 ms.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, RouterLoadError
from .acceptor import Acceptor
from .features import NgramFeatures
from .gate import Certificate
from .trust import Prototypes

__all__ = ["Decision", "Router", "TextModel"]

FORMAT = "tracer_wrap.fused-softmax.v2"
#: Routers whose acceptor scores trust margins: a version that knows only ``FORMAT`` must refuse
#: them (it would score without the margin, against thresholds certified with it).
FORMAT_TRUST = "tracer_wrap.fused-softmax.v3"
#: Earlier routers (embedding surrogate only, global acceptor) still load.
FORMAT_V1 = "tracer_wrap.linear-softmax.v1"
_MANIFEST_KEYS = {"format", "labels", "target", "certificates", "embedding_certificates",
                  "acceptor", "text_acceptor", "features", "surrogate"}


@dataclass(frozen=True)
class Decision:
    """What the router says about one input.

    ``label`` is the surrogate's answer; ``local`` says whether the gate accepts it (answer
    locally) or defers to the LLM; ``score`` is the acceptor score compared with ``threshold``,
    the certified threshold for that label at the served target (None: never answered locally).
    """

    label: str | None
    local: bool
    score: float
    threshold: float | None
    reason: str = ""


@dataclass(frozen=True)
class TextModel:
    """The fused surrogate:
    ``logits = ngrams(text) @ ngram_weights + embedding @ weights.T + bias``.

    ``ngram_weights`` is ``(features.n_features, n_labels)``, ``weights`` ``(n_labels, dim)``.
    The n-gram weights are kept and saved as float16 (half the memory and file);
    :func:`~tracer_wrap.model.fit.fit_router` rounds them so before certifying, so the model
    served is exactly the one certified.
    """

    features: NgramFeatures
    ngram_weights: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    certificates: Mapping[float, Certificate]
    acceptor: Acceptor = field(default_factory=Acceptor)


@dataclass
class _Head:
    """One surrogate as served: arrays, acceptor, certificates, thresholds of the served target."""

    weights: np.ndarray
    bias: np.ndarray
    certificates: dict[float, Certificate]
    acceptor: Acceptor
    ngram_weights: np.ndarray | None = None
    features: NgramFeatures | None = None
    cert: Certificate | None = None
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def logits(self, texts: Sequence[str] | None, vectors: np.ndarray) -> np.ndarray:
        z = np.asarray(vectors, dtype=np.float32) @ self.weights.T + self.bias
        if self.ngram_weights is not None and self.features is not None and texts is not None:
            if len(texts) == 1:
                z[0] += self.features.dot(texts[0], self.ngram_weights)
            else:
                z += np.asarray(self.features.transform(texts) @ self.ngram_weights)
        return np.asarray(z, dtype=np.float32)


class Router:
    """Surrogates, label names and per-target certificates; ``target`` picks the one served.

    Build routers with :func:`tracer_wrap.model.fit.fit_router`; the constructor only stores arrays.
    ``weights``, ``bias``, ``certificates`` and ``acceptor`` are the embedding surrogate's;
    ``text_model`` adds the fused one, whose certificates then become the router's main ones
    (:attr:`certificates`, :meth:`certificate_for`, :attr:`threshold`), since every path but
    route-by-embedding knows the text. ``prototypes`` are the trust margin's
    (:mod:`tracer_wrap.model.trust`), required when an acceptor uses the margin. Raises
    ConfigError when the arrays disagree in size.
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
        acceptor: Acceptor | None = None,
        text_model: TextModel | None = None,
        prototypes: Prototypes | None = None,
    ) -> None:
        self.labels = list(labels)
        k = len(self.labels)
        self._embedding = _Head(np.ascontiguousarray(weights, dtype=np.float32),
                                np.ascontiguousarray(bias, dtype=np.float32),
                                dict(certificates), acceptor or Acceptor())
        self._text: _Head | None = None
        if text_model is not None:
            self._text = _Head(np.ascontiguousarray(text_model.weights, dtype=np.float32),
                               np.ascontiguousarray(text_model.bias, dtype=np.float32),
                               dict(text_model.certificates), text_model.acceptor,
                               np.ascontiguousarray(text_model.ngram_weights, dtype=np.float16),
                               text_model.features)
        for head in self._heads():
            if head.weights.ndim != 2 or head.weights.shape[0] != k or head.bias.shape != (k,):
                raise ConfigError("weights, bias and labels disagree in size")
            if head.weights.shape[1] != self._embedding.weights.shape[1]:
                raise ConfigError("the text and embedding surrogates disagree in dimension")
            if head.acceptor.intercepts is not None and head.acceptor.intercepts.shape != (k,):
                raise ConfigError("acceptor intercepts and labels disagree in size")
            if head.ngram_weights is not None and (
                    head.features is None
                    or head.ngram_weights.shape != (head.features.n_features, k)):
                raise ConfigError("n-gram weights and features disagree in size")
        if prototypes is not None and (prototypes.n_labels != k or prototypes.rows.shape[1]
                                       != self._embedding.weights.shape[1]):
            raise ConfigError("trust prototypes disagree with the labels or the dimension")
        if prototypes is None and any(head.acceptor.uses_trust for head in self._heads()):
            raise ConfigError("an acceptor scores trust margins but the router has no prototypes")
        self.prototypes = prototypes
        for head in self._heads():
            for cert in head.certificates.values():
                if cert.label_thresholds is not None and len(cert.label_thresholds) != k:
                    raise ConfigError("per-label thresholds and labels disagree in size")
        self.info = dict(info or {})
        self.target = target

    def with_certificates(self, certificates: Mapping[float, Certificate],
                          text_certificates: Mapping[float, Certificate] | None = None, *,
                          info: Mapping[str, Any] | None = None) -> Router:
        """A router serving the same surrogates under other certificates (the embedding one's,
        and the fused one's when there is a fused model), e.g. a re-certification on fresh
        traces. Shares the arrays; ``info`` defaults to this router's."""
        text_model = None
        if self._text is not None:
            head = self._text
            assert head.features is not None and head.ngram_weights is not None
            text_model = TextModel(head.features, head.ngram_weights, head.weights, head.bias,
                                   dict(text_certificates or {}), head.acceptor)
        return Router(self._embedding.weights, self._embedding.bias, self.labels,
                      certificates, target=self.target,
                      info=self.info if info is None else info,
                      acceptor=self._embedding.acceptor, text_model=text_model,
                      prototypes=self.prototypes)

    def _heads(self) -> list[_Head]:
        return [self._embedding] if self._text is None else [self._embedding, self._text]

    def _head(self, text: bool) -> _Head:
        return self._text if text and self._text is not None else self._embedding

    # -- what the rest of the package reads --------------------------------------------------------

    @property
    def weights(self) -> np.ndarray:
        """The embedding surrogate's ``(n_labels, dim)`` weights."""
        return self._embedding.weights

    @property
    def bias(self) -> np.ndarray:
        return self._embedding.bias

    @property
    def has_text_model(self) -> bool:
        """Whether inputs with a known text are routed by the fused (n-grams + embedding) model."""
        return self._text is not None

    @property
    def certificates(self) -> dict[float, Certificate]:
        """Certificates of the main surrogate (the fused one when present), by target."""
        return self._head(True).certificates

    @property
    def embedding_certificates(self) -> dict[float, Certificate]:
        """Certificates of the embedding-only surrogate (route-by-embedding), by target."""
        return self._embedding.certificates

    @property
    def target(self) -> float:
        return self._target

    @target.setter
    def target(self, value: float) -> None:
        certs = [self._certificate(head, value) for head in self._heads()]
        self._target = float(value)
        k = len(self.labels)
        for head, cert in zip(self._heads(), certs):
            head.cert = cert
            if cert.label_thresholds is not None:
                head.thresholds = np.array([np.inf if t is None else t
                                            for t in cert.label_thresholds], dtype=np.float64)
            else:
                head.thresholds = np.full(k, np.inf if cert.threshold is None else cert.threshold)

    @property
    def threshold(self) -> float | None:
        """The certified threshold of the served target (None: the gate refused); for per-label
        certificates, the smallest label threshold (see :meth:`label_thresholds`)."""
        cert = self._head(True).cert
        return None if cert is None else cert.threshold

    def label_thresholds(self, *, text: bool = True) -> np.ndarray:
        """Per-label thresholds of the served target (``inf``: never answered locally)."""
        return self._head(text).thresholds.copy()

    @property
    def dim(self) -> int:
        return int(self._embedding.weights.shape[1])

    def certificate_for(self, target: float, *, text: bool = True) -> Certificate:
        """The certificate of ``target``, or of the nearest stricter target that was certified.

        ``text=False`` reads the embedding-only surrogate's certificates (route-by-embedding).
        """
        return self._certificate(self._head(text), target)

    @staticmethod
    def _certificate(head: _Head, target: float) -> Certificate:
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"target must be in (0, 1], got {target!r}")
        if target in head.certificates:
            return head.certificates[target]
        for t in sorted(t for t in head.certificates if t >= target):
            if head.certificates[t].certified:
                return head.certificates[t]
        return Certificate(target, None, 0.0, None, 0, None,
                           f"target {target} was not among the fitted targets")

    # -- serving -----------------------------------------------------------------------------

    def logits(self, texts: Sequence[str] | None, vectors: np.ndarray) -> np.ndarray:
        """Label logits, shape ``(n, n_labels)``: of the fused surrogate with ``texts`` and a
        text model, of the embedding-only one otherwise (as :meth:`scores` picks)."""
        return self._head(texts is not None).logits(texts, vectors)

    def scores(self, vectors: np.ndarray, texts: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted label index and acceptor score for each row.

        With ``texts`` (aligned with ``vectors``) and a text model, the fused surrogate answers;
        otherwise the embedding-only one. Compare the scores with :meth:`label_thresholds` of the
        same path, not with another path's.
        """
        head = self._head(texts is not None)
        logits = head.logits(texts, vectors)
        top = logits.argmax(axis=1)
        shifted = logits - logits[np.arange(len(top)), top][:, None]
        prob = 1.0 / np.exp(shifted).sum(axis=1)
        trust = (self.prototypes.margins(vectors, top)
                 if head.acceptor.uses_trust and self.prototypes is not None else None)
        return top, head.acceptor.score(top, prob, trust)

    def decide(self, texts: Sequence[str] | None, vectors: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label indices, acceptor scores and local flags at the served target, for a batch."""
        top, score = self.scores(vectors, texts)
        thresholds = self._head(texts is not None).thresholds[top]
        return top, score, score >= thresholds

    def route(self, text: str | None, vector: np.ndarray) -> Decision:
        """Decision for one input: its text (None when only the embedding is known, as in the
        sidecar's route-by-embedding) and its embedding, shape ``(dim,)``."""
        return self.route_many(None if text is None else [text], np.asarray(vector)[None, :])[0]

    def route_many(self, texts: Sequence[str] | None, vectors: np.ndarray) -> list[Decision]:
        """Decisions for a batch: ``texts`` (or None) and their embeddings, shape ``(n, dim)``.

        With texts and a text model the fused surrogate and its certificates decide; without
        texts the embedding-only surrogate and its own certificates do, so the guarantee holds on
        both paths.
        """
        head = self._head(texts is not None)
        top, score, local = self.decide(texts, vectors)
        cert = head.cert
        refused = (cert.reason if cert is not None else "") or "score below threshold"
        decisions = []
        for t, p, ok in zip(top, score, local):
            threshold = float(head.thresholds[t])
            finite = bool(np.isfinite(threshold))
            if ok:
                reason = "accepted"
            elif not finite and cert is not None and cert.certified:
                reason = f"label {self.labels[t]!r} is not certified for local answers"
            else:
                reason = refused
            decisions.append(Decision(self.labels[t], bool(ok), float(p),
                                      threshold if finite else None, reason))
        return decisions

    def frontier(self, *, text: bool = True) -> list[dict[str, Any]]:
        """One row per fitted target: certified threshold, coverage and agreement on calibration.

        ``text=False``: the embedding-only surrogate's frontier.
        """
        certs = self._head(text).certificates
        return [_cert_dict(certs[t]) for t in sorted(certs)]

    # -- persistence ---------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """Everything about this router except its arrays (JSON-serialisable)."""
        import sklearn

        out: dict[str, Any] = {
            "format": FORMAT if self.prototypes is None else FORMAT_TRUST,
            "labels": self.labels,
            "target": self.target,
            "surrogate": "fused" if self._text is not None else "embedding",
            "certificates": self.frontier(),
            "acceptor": _acceptor_params(self._embedding.acceptor),
        }
        if self._text is not None and self._text.features is not None:
            out["embedding_certificates"] = self.frontier(text=False)
            out["text_acceptor"] = _acceptor_params(self._text.acceptor)
            out["features"] = self._text.features.params()
        return {
            **out,
            **{k: v for k, v in self.info.items() if k not in _MANIFEST_KEYS},
            "versions": {"numpy": np.__version__, "scikit-learn": sklearn.__version__,
                         "python": platform.python_version()},
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The router's arrays by name, as :meth:`to_bytes` writes them.

        The n-gram weights are stored as float16, which halves the file; the fit rounds them to
        float16 *before* calibration, so the certified model is exactly the one stored.
        """
        out = {"weights": self._embedding.weights, "bias": self._embedding.bias}
        if self._embedding.acceptor.intercepts is not None:
            out["acceptor_intercepts"] = self._embedding.acceptor.intercepts
        text = self._text
        if text is not None and text.features is not None and text.ngram_weights is not None:
            out.update(text_weights=text.weights, text_bias=text.bias,
                       text_ngram_weights=text.ngram_weights,
                       **text.features.arrays())
            if text.acceptor.intercepts is not None:
                out["text_acceptor_intercepts"] = text.acceptor.intercepts
        if self.prototypes is not None:
            out.update(trust_prototypes=self.prototypes.rows, trust_owners=self.prototypes.owners)
        return out

    def to_bytes(self) -> tuple[bytes, dict[str, Any]]:
        """The array file (``.npz`` bytes, no pickle) and the manifest recording its SHA-256."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = self.arrays()
        np.savez(buf, **arrays)
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
        Routers of the earlier formats (embedding surrogate only; no trust margins) load too.
        ``source`` names the router in error messages.
        """
        try:
            actual = hashlib.sha256(data).hexdigest()
            if manifest.get("format") not in (FORMAT_TRUST, FORMAT, FORMAT_V1):
                raise RouterLoadError(f"{source}: unknown router format {manifest.get('format')!r}")
            for expected in (manifest.get("sha256"), expected_sha256):
                if expected is not None and expected != actual:
                    raise RouterLoadError(f"{source}: content hash mismatch, refusing to load")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            text_model = None
            if "features" in manifest:
                text_model = TextModel(
                    NgramFeatures.from_arrays(manifest["features"], arrays),
                    arrays["text_ngram_weights"], arrays["text_weights"], arrays["text_bias"],
                    _certificates(manifest["certificates"]),
                    _acceptor(manifest.get("text_acceptor"),
                              arrays.get("text_acceptor_intercepts")))
            embedding_certs = manifest.get("embedding_certificates", manifest["certificates"])
            info = {k: v for k, v in manifest.items() if k not in _MANIFEST_KEYS}
            prototypes = (Prototypes(arrays["trust_prototypes"], arrays["trust_owners"],
                                     len(manifest["labels"]))
                          if "trust_prototypes" in arrays else None)
            return cls(arrays["weights"], arrays["bias"], manifest["labels"],
                       _certificates(embedding_certs),
                       target=manifest["target"] if target is None else target, info=info,
                       acceptor=_acceptor(manifest.get("acceptor"),
                                          arrays.get("acceptor_intercepts")),
                       text_model=text_model, prototypes=prototypes)
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


def _cert_dict(cert: Certificate) -> dict[str, Any]:
    out = asdict(cert)
    if cert.label_thresholds is not None:
        out["label_thresholds"] = list(cert.label_thresholds)
    return out


def _certificates(rows: Sequence[Mapping[str, Any]]) -> dict[float, Certificate]:
    certs = {}
    for row in rows:
        fields = dict(row)
        if fields.get("label_thresholds") is not None:
            fields["label_thresholds"] = tuple(
                None if t is None else float(t) for t in fields["label_thresholds"])
        cert = Certificate(**fields)
        certs[float(cert.target)] = cert
    return certs


def _acceptor_params(acceptor: Acceptor) -> dict[str, Any]:
    return {"per_label": acceptor.per_label, "slope": acceptor.slope,
            "trust_slope": acceptor.trust_slope}


def _acceptor(params: Mapping[str, Any] | None, intercepts: np.ndarray | None) -> Acceptor:
    if not params or not params.get("per_label"):
        return Acceptor()
    if intercepts is None:
        raise RouterLoadError("the manifest names a per-label acceptor but its array is missing")
    return Acceptor(np.asarray(intercepts, dtype=np.float64), float(params["slope"]),
                    float(params.get("trust_slope", 0.0)))
