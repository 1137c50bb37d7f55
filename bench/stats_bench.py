"""The decision rule's error rates, coverage and power by simulation (the figures in docs/statistics.md).

    python bench/stats_bench.py                   # 2,000 experiments per scenario
    python bench/stats_bench.py --experiments 500 # quicker

Scenarios (normlib.eval.power.Design defaults: 34 templates x 5 items, 5 answers per item, violating/benign
base rates 18%/5%, item SD 1.0, seed SD 0.3, seed-by-set SD 0.2, on the logit scale):
  null               no effect anywhere                      -> test rejects (two-sided 5%)
  uniform            +0.7 logit on every request             -> decision rule says "supported"
  templates          per-template effects, mean 0, SD 0.15   -> "supported" (a directional 5% test allows 2.5%)
  effect 0.5         +0.5 logit on violating requests        -> interval coverage of the true effect
  belief null        no uptake of the belief                 -> manipulation check passes
  power              +0.5 / +1.0 logit on violating          -> "supported" with 1 hypothesis and with 12
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from normlib.eval.power import DEFAULTS, Effect, rates  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=2000)
    args = ap.parse_args()
    n = args.experiments
    rows = []
    for seeds in (3, 5, 8):
        d = replace(DEFAULTS, seeds=seeds)
        null = rates(d, Effect(), n, seed=1)
        uniform = rates(d, Effect(violating=0.7, benign=0.7, control=0.7, belief=1.0), n, seed=2)
        templates = rates(d, Effect(template_sd=0.15, belief=1.0), n, seed=3)
        effect = rates(d, Effect(violating=0.5, belief=1.0), n, seed=4)
        power1 = rates(d, Effect(violating=1.0, belief=1.0), n, seed=5)
        power12 = rates(d, Effect(violating=1.0, belief=1.0), n, seed=5, family=12)
        rows.append((seeds, null["reject"], null["belief_pass"], uniform["supported"], templates["supported"],
                     effect["coverage"], effect["supported"], power1["supported"], power12["reject"]))
        print(rows[-1], flush=True)
    header = (f"\n### Decision rule by simulation, {time.strftime('%Y-%m-%d')}: {n} experiments per cell\n\n"
              "| seeds per arm | null: test rejects | null: belief check passes | uniform +0.7: supported | "
              "template effects: supported | effect +0.5: CI coverage | effect +0.5: supported | "
              "effect +1.0: supported | effect +1.0: rejected at alpha/12 |\n|---|---|---|---|---|---|---|---|---|\n")
    table = "".join("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |\n" for r in rows)
    print(header + table)


if __name__ == "__main__":
    main()
