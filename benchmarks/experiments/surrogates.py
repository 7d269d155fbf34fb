"""Scratch experiments: which surrogate + acceptor + calibration fraction maximises certified coverage.

Protocol (per variant, per random split of TRAIN into fit part / calibration part; TEST fixed):
fit the surrogate (and its out-of-fold reference scores) on the fit part only, build the grid with
``threshold_grid`` from the out-of-fold acceptor scores, ``certify`` on the calibration part at
delta=0.05 for each target, then apply the certified threshold to TEST and measure held-out
coverage and agreement with the teacher. Teachers: gold labels, and SimulatedLLM(error 0.15) for
both train and test labels (uniform errors, and errors concentrated on ambiguous texts).

Run: ``.venv/bin/python benchmarks/experiments/surrogates.py [--teacher gold|sim|simamb] [--splits 5]
[--variants a,b,c]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours  # noqa: E402
from tracer_wrap.model.gate import certify, threshold_grid  # noqa: E402

torch.set_num_threads(1)  # the shared 2-core box is oversubscribed; 1 thread is faster here
TARGETS = (0.90, 0.95, 0.98)
DELTA = 0.05


# ----------------------------------------------------------------------------------------------
# Softmax regression with L-BFGS (same objective as sklearn LogisticRegression(C): mean CE +
# ||W||^2 / (2 C n)), much faster than sklearn's lbfgs for 77 classes x 384 dims.
# ----------------------------------------------------------------------------------------------
def fit_softmax(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray,
    n_classes: int,
    C: float = 30.0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 150,
) -> tuple[torch.Tensor, torch.Tensor]:
    Xt = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    d = Xt.shape[1]
    if init is None:
        W = torch.zeros(d, n_classes, requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
    else:
        W = init[0].clone().requires_grad_(True)
        b = init[1].clone().requires_grad_(True)
    lam = 1.0 / (2.0 * C * len(y))
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (torch.sparse.mm(Xt, W) if Xt.is_sparse else Xt @ W) + b
        loss = torch.nn.functional.cross_entropy(logits, yt) + lam * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def logits_of(X: np.ndarray, Wb: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    return X @ Wb[0].numpy() + Wb[1].numpy()


def softmax(z: np.ndarray, T: float = 1.0) -> np.ndarray:
    z = z / T
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    best, bestT = np.inf, 1.0
    for T in np.exp(np.linspace(np.log(0.3), np.log(3.0), 25)):
        p = softmax(z, T)
        nll = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        if nll < best:
            best, bestT = nll, float(T)
    return bestT


# ----------------------------------------------------------------------------------------------
# Surrogates: return OOF logits on the fit part and a served logit function.
# ----------------------------------------------------------------------------------------------
@dataclass
class Fitted:
    oof_logits: np.ndarray  # (n_fit, k) out-of-fold
    serve: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (X, row index into the text matrix) -> logits
    info: str = ""


def folds(n: int, K: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), K)


def crossfit_linear(Xf, yf, k, C, K, rng, refit=False, feats=None, cfg_iters=(80, 30)) -> Fitted:
    """K fold models; OOF logits from each held-out fold; served = mean of the K linear models."""
    F = Xf if feats is None else feats
    parts = folds(len(yf), K, rng)
    oof = np.zeros((len(yf), k), dtype=np.float64)
    Ws, bs = [], []
    init = None
    for i, te in enumerate(parts):
        tr = np.concatenate([p for j, p in enumerate(parts) if j != i])
        Wb = fit_softmax(_rows(F, tr), yf[tr], k, C=C, init=init, max_iter=cfg_iters[0] if init is None else cfg_iters[1])
        init = Wb
        oof[te] = _apply(F, te, Wb)
        Ws.append(Wb[0]); bs.append(Wb[1])
    if refit:
        Wb = fit_softmax(F if not isinstance(F, np.ndarray) else F, yf, k, C=C, init=init, max_iter=cfg_iters[1])
    else:
        Wb = (torch.stack(Ws).mean(0), torch.stack(bs).mean(0))
    return Fitted(oof, lambda Fx, Wb=Wb: _apply(Fx, None, Wb))


def _rows(F, idx):
    if isinstance(F, np.ndarray):
        return F[idx]
    return _to_torch_sparse(F[idx])


def _apply(F, idx, Wb):
    G = F if idx is None else F[idx]
    if isinstance(G, np.ndarray):
        return G @ Wb[0].numpy() + Wb[1].numpy()
    return np.asarray(G @ Wb[0].numpy()) + Wb[1].numpy()


def _to_torch_sparse(M) -> torch.Tensor:
    M = M.tocoo()
    idx = torch.from_numpy(np.vstack([M.row, M.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(M.data.astype(np.float32)), M.shape).coalesce()


# ----------------------------------------------------------------------------------------------
# Acceptor scores
# ----------------------------------------------------------------------------------------------
def base_features(z: np.ndarray, T: float) -> dict[str, np.ndarray]:
    p = softmax(z, T)
    ps = np.sort(p, axis=1)
    ent = -(p * np.log(p + 1e-12)).sum(1)
    zs = np.sort(z, axis=1)
    return {"maxprob": ps[:, -1], "margin": ps[:, -1] - ps[:, -2], "neg_entropy": -ent,
            "logit_gap": zs[:, -1] - zs[:, -2]}


def learned_acceptor(feat_oof: np.ndarray, correct_oof: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    mu, sd = feat_oof.mean(0), feat_oof.std(0) + 1e-9
    clf = LogisticRegression(C=1.0, max_iter=500).fit((feat_oof - mu) / sd, correct_oof)
    return lambda F: clf.decision_function((F - mu) / sd)


# ----------------------------------------------------------------------------------------------
def run_variant(name: str, cfg: dict, D: dict, teacher: str, n_splits: int, cal_frac: float) -> dict:
    k = D["k"]
    X, Xte = D["X"], D["Xte"]
    ytr = D["y_" + teacher]; yte = D["yte_" + teacher]
    res = {t: {"cov": [], "agr": [], "fail": [], "calcov": []} for t in TARGETS}
    fit_secs, cpu_secs, accs = [], [], []
    for s in range(n_splits):
        rng = np.random.default_rng(1000 + s)
        perm = rng.permutation(len(ytr))
        n_cal = int(round(cal_frac * len(ytr)))
        cal, fit = perm[:n_cal], perm[n_cal:]
        t0 = time.perf_counter(); c0 = time.process_time()
        feats_all = feats_te = None
        if cfg.get("tfidf"):
            feats_all, feats_te = D["tfidf_builder"](fit, cfg["tfidf"])
        F_fit = X[fit] if feats_all is None else feats_all[fit]
        fitted = crossfit_linear(X[fit] if feats_all is None else None, ytr[fit], k, cfg.get("C", 30.0),
                                 cfg.get("K", 5), rng, refit=cfg.get("refit", False),
                                 feats=None if feats_all is None else feats_all[fit],
                                 cfg_iters=cfg.get("iters", (80, 30)))
        z_oof = fitted.oof_logits
        T = fit_temperature(z_oof, ytr[fit]) if cfg.get("temp") else 1.0
        z_cal = fitted.serve(X[cal] if feats_all is None else feats_all[cal])
        z_te = fitted.serve(Xte if feats_te is None else feats_te)
        acc_name = cfg.get("acceptor", "maxprob")
        if acc_name in ("learned", "learned_knn"):
            def feats(z, Xq, exclude_self):
                b = base_features(z, T)
                cols = [b["maxprob"], b["margin"], b["neg_entropy"], b["logit_gap"]]
                pred = z.argmax(1)
                cols.append((Xq * D["cent_fn"](fit, ytr)[pred]).sum(1))
                if acc_name == "learned_knn":
                    sims = Xq @ X[fit].T
                    if exclude_self:
                        sims[np.arange(len(Xq)), np.arange(len(Xq))] = -np.inf
                    nn = np.argpartition(-sims, 10, axis=1)[:, :10]
                    cols.append((ytr[fit][nn] == pred[:, None]).mean(1))
                    cols.append(sims.max(1))
                return np.column_stack(cols)
            Foof = feats(z_oof, X[fit], True)
            scorer = learned_acceptor(Foof, z_oof.argmax(1) == ytr[fit])
            ref = scorer(Foof)
            s_cal = scorer(feats(z_cal, X[cal], False))
            s_te = scorer(feats(z_te, Xte, False))
        else:
            ref = base_features(z_oof, T)[acc_name]
            s_cal = base_features(z_cal, T)[acc_name]
            s_te = base_features(z_te, T)[acc_name]
        grid = threshold_grid(ref, size=cfg.get("grid", 200))
        agree_cal = z_cal.argmax(1) == ytr[cal]
        certs = {t: certify(s_cal, agree_cal, grid=grid, reference_scores=ref, target=t, delta=DELTA)
                 for t in TARGETS}
        fit_secs.append(time.perf_counter() - t0); cpu_secs.append(time.process_time() - c0)
        agree_te = z_te.argmax(1) == yte
        accs.append(agree_te.mean())
        for t, c in certs.items():
            if c.certified:
                m = s_te >= c.threshold
                cov = m.mean(); agr = agree_te[m].mean() if m.any() else 1.0
            else:
                cov, agr = 0.0, 1.0
            res[t]["cov"].append(cov); res[t]["agr"].append(agr); res[t]["calcov"].append(c.coverage)
            res[t]["fail"].append(agr < t)
    out = {"name": name, "fit_s": float(np.mean(fit_secs)), "fit_s_max": float(np.max(fit_secs)), "cpu_s": float(np.mean(cpu_secs)),
           "acc": float(np.mean(accs))}
    for t in TARGETS:
        r = res[t]
        out[t] = (float(np.mean(r["cov"])), float(np.std(r["cov"])), float(np.mean(r["agr"])),
                  float(np.mean(r["fail"])), float(np.min(r["agr"])))
    return out


def oracle(z_te: np.ndarray, yte: np.ndarray, t: float) -> float:
    s = softmax(z_te).max(1); o = np.argsort(-s); a = (z_te.argmax(1) == yte)[o]
    ok = np.cumsum(a) / np.arange(1, len(a) + 1) >= t
    return (np.nonzero(ok)[0].max() + 1) / len(a) if ok.any() else 0.0


def load() -> dict:
    tr = np.load("/work/cache/b77_train.npz"); te = np.load("/work/cache/b77_test.npz")
    classes = np.array(sorted(set(tr["y"].tolist())))
    idx = {c: i for i, c in enumerate(classes)}
    D = {"X": tr["X"].astype(np.float32), "Xte": te["X"].astype(np.float32), "k": len(classes),
         "texts": tr["texts"], "texts_te": te["texts"], "classes": classes}
    D["y_gold"] = np.array([idx[c] for c in tr["y"]]); D["yte_gold"] = np.array([idx[c] for c in te["y"]])
    nb = load_banking77_neighbours()
    sim = SimulatedLLM(nb, error_rate=0.15, seed=0)
    D["y_sim"] = np.array([idx[sim.label_for(t, g)] for t, g in zip(tr["texts"], tr["y"])])
    D["yte_sim"] = np.array([idx[sim.label_for(t, g)] for t, g in zip(te["texts"], te["y"])])
    # Ambiguity-concentrated teacher: ambiguity = 1 - out-of-fold probability of the gold label under
    # a character TF-IDF model (a different feature family than the embedding surrogate), on all texts.
    amb_path = Path("/tmp/b77_ambiguity.npz")
    if amb_path.exists():
        a = np.load(amb_path); amb_tr, amb_te = a["tr"], a["te"]
    else:
        amb_tr, amb_te = _tfidf_ambiguity(D)
        np.savez(amb_path, tr=amb_tr, te=amb_te)
    amb = {t: float(v) for t, v in zip(np.concatenate([D["texts"], D["texts_te"]]), np.concatenate([amb_tr, amb_te]))}
    sima = SimulatedLLM(nb, error_rate=0.15, seed=0, ambiguity=amb)
    D["y_simamb"] = np.array([idx[sima.label_for(t, g)] for t, g in zip(tr["texts"], tr["y"])])
    D["yte_simamb"] = np.array([idx[sima.label_for(t, g)] for t, g in zip(te["texts"], te["y"])])

    def cent_fn(fit, y, _cache={}):
        key = (id(fit), id(y))
        if key not in _cache:
            _cache.clear()
            C = np.zeros((len(classes), D["X"].shape[1]), dtype=np.float32)
            np.add.at(C, y[fit], D["X"][fit])
            C /= np.linalg.norm(C, axis=1, keepdims=True) + 1e-9
            _cache[key] = C
        return _cache[key]
    D["cent_fn"] = cent_fn

    def tfidf_builder(fit, spec):
        from scipy.sparse import csr_matrix, hstack
        from sklearn.feature_extraction.text import TfidfVectorizer
        kind, maxf, w = spec
        if kind == "word":
            v = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=maxf, sublinear_tf=True)
        else:
            v = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, max_features=maxf, sublinear_tf=True)
        v.fit(D["texts"][fit])
        A = v.transform(D["texts"]) * w; B = v.transform(D["texts_te"]) * w
        return (hstack([csr_matrix(D["X"]), A]).tocsr(), hstack([csr_matrix(D["Xte"]), B]).tocsr())
    D["tfidf_builder"] = tfidf_builder
    return D


def _tfidf_ambiguity(D: dict) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    texts = np.concatenate([D["texts"], D["texts_te"]]); y = np.concatenate([D["y_gold"], D["yte_gold"]])
    F = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True).fit_transform(texts)
    P = cross_val_predict(LogisticRegression(C=10, max_iter=300), F, y, cv=5, method="predict_proba", n_jobs=1)
    a = 1.0 - P[np.arange(len(y)), y]
    return a[: len(D["y_gold"])], a[len(D["y_gold"]):]


VARIANTS: dict[str, dict] = {
    "cf5_C30_maxprob": {"C": 30, "K": 5},
    "cf5_C30_margin": {"C": 30, "K": 5, "acceptor": "margin"},
    "cf3_C30_margin": {"C": 30, "K": 3, "acceptor": "margin"},
    "cf5_C30_refit_margin": {"C": 30, "K": 5, "refit": True, "acceptor": "margin"},
    "cf5_C30_long_margin": {"C": 30, "K": 5, "acceptor": "margin", "iters": (150, 60)},
    "cf5_C10_margin": {"C": 10, "K": 5, "acceptor": "margin"},
    "cf5_C100_margin": {"C": 100, "K": 5, "acceptor": "margin"},
    "cf5_C30_word20k_margin": {"C": 30, "K": 5, "acceptor": "margin", "tfidf": ("word", 20000, 0.5)},
    "cf5_C30_T_maxprob": {"C": 30, "K": 5, "temp": True},
    "cf5_C10_maxprob": {"C": 10, "K": 5},
    "cf5_C100_maxprob": {"C": 100, "K": 5},
    "cf5_C30_refit_maxprob": {"C": 30, "K": 5, "refit": True},
    "cf3_C30_maxprob": {"C": 30, "K": 3},
    "cf10_C30_maxprob": {"C": 30, "K": 10},
    "cf5_C30_learned": {"C": 30, "K": 5, "acceptor": "learned"},
    "cf5_C30_learned_knn": {"C": 30, "K": 5, "acceptor": "learned_knn"},
    "cf5_C30_word20k_maxprob": {"C": 30, "K": 5, "tfidf": ("word", 20000, 0.5)},
    "cf5_C30_char30k_maxprob": {"C": 30, "K": 5, "tfidf": ("char", 30000, 0.5)},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="gold")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--cal", type=float, default=0.3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    D = load()
    err_tr = (D["y_" + args.teacher] != D["y_gold"]).mean(); err_te = (D["yte_" + args.teacher] != D["yte_gold"]).mean()
    print(f"# teacher={args.teacher} (teacher error vs gold: train {err_tr:.3f}, test {err_te:.3f}) cal_frac={args.cal} "
          f"splits={args.splits} delta={DELTA}")
    print("| variant | fit s wall mean/max, CPU | test agr-all | " + " | ".join(
        f"cov@{t} (sd) / agr / fail / min agr" for t in TARGETS) + " |")
    print("|---|---|---|" + "---|" * len(TARGETS))
    for name in args.variants.split(","):
        r = run_variant(name, VARIANTS[name], D, args.teacher, args.splits, args.cal)
        cells = [f"{r[t][0]:.3f} ({r[t][1]:.3f}) / {r[t][2]:.3f} / {r[t][3]:.0%} / {r[t][4]:.3f}" for t in TARGETS]
        print(f"| {name} | {r['fit_s']:.1f}/{r['fit_s_max']:.1f}, {r['cpu_s']:.1f} | {r['acc']:.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
