#!/usr/bin/env python3
"""Checks what the demo printed and saved (runs/demo/summary.json) against what it must show.

The demo is deterministic for its seed on one machine; these are floors with room for another
CPU's floating point, not the exact numbers (docs/results.md has those):
  python3 tools/check_demo.py runs/demo/summary.json runs/demo/stdout.txt
"""
import json
import sys


def main(summary_path, stdout_path):
    s = json.load(open(summary_path))
    printed = open(stdout_path).read()
    failures = []

    def need(ok, what):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    counts = {k.lower(): v for k, v in s["split_counts"].items()}
    need(all(counts.get(p, 0) > 0 for p in ("train", "val", "test")), f"three partitions {counts}")
    m = s["test"]["metrics"]
    need(m["n"] >= 0.95 * counts["test"], f"test metrics over the test partition (n {m['n']} of {counts['test']})")
    need(m["accuracy"] >= 0.65, f"test top-1 {m['accuracy']:.3f} >= 0.65")
    need((m["macro_auc"] or 0) >= 0.80, f"test macro AUC {m['macro_auc']:.3f} >= 0.80")
    losses = [s["pretrain"].get(k) for k in ("first_loss", "final_loss")]
    if None not in losses:
        need(losses[1] < losses[0], f"SimCLR loss fell {losses[0]:.3f} -> {losses[1]:.3f}")
    e = s["export"]
    need(e["max_abs_logit_diff"] <= 1e-4, f"ONNX vs burn max |logit diff| {e['max_abs_logit_diff']:.1e} <= 1e-4")
    need(e["signed_by"] is not None, "bundle signed")
    best = e["int8"]["methods"][0]
    need(best["top1_agreement"] >= 0.95, f"int8 top-1 agreement with fp32 {best['top1_agreement']:.3f} >= 0.95")
    screened = s["screened"]
    need(len(screened) >= 7, f"{len(screened)} images screened by the runtime binary")
    worst = max(r["max_prob_diff_vs_burn"] for r in screened)
    need(worst <= 1e-4, f"runtime vs burn max |prob diff| {worst:.1e} <= 1e-4")
    need(all(r["file"] in printed for r in screened), "every screened file in the printed summary")
    need(f"{m['accuracy']:.3f}" in printed, "the printed summary shows the saved test top-1")
    if failures:
        print(f"demo check: {len(failures)} failed")
        sys.exit(1)
    print("demo check: all passed")


if __name__ == "__main__":
    main(*sys.argv[1:3])
