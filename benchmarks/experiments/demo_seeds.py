"""`make demo` over seeds, with the library's refit schedule and an earlier one (issue 13).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/demo_seeds.py [--seeds 0 1 2 3 4 5]
        [--schedules every-1000 library]

Runs :func:`tracer_wrap.lab.demo.run` (10,000 queries, target 0.95) for each seed, first with its
earlier schedule (first refit at 1,000 traces, then every 1,000) and then with the library's
defaults, which it runs now (first at 200, doubling, then every 500), one embedder for all runs (its
cache holds every query after the first). Prints one line per run: the share answered locally over
the whole stream and the last 2,000 queries, and the agreement of local answers with the simulated
LLM.
"""

from __future__ import annotations

import argparse
import io

from rich.console import Console

from tracer_wrap.lab.demo import run
from tracer_wrap.model.embedder import Embedder

SCHEDULES: dict[str, tuple[int | None, int | None]] = {
    "every-1000": (1000, 1000), "library": (None, None)}  # library: 200, doubling, every 500


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES),
                        default=list(SCHEDULES))
    args = parser.parse_args()
    embedder = Embedder.default(threads=None)
    quiet = Console(file=io.StringIO())
    for seed in args.seeds:
        for name in args.schedules:
            min_traces, refit_every = SCHEDULES[name]
            r = run(seed=seed, min_traces=min_traces, refit_every=refit_every,
                    embedder=embedder, console=quiet)
            print(f"seed {seed} {name:10} local {r.local / r.queries:.1%}"
                  f"  last {r.last_window:,} {r.last_window_local / r.last_window:.1%}"
                  f"  agreement {r.local_agree / max(r.local, 1):.2%}  {r.seconds:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
