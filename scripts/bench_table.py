#!/usr/bin/env python
"""Turn a pytest-benchmark JSON file into a Markdown table with ratios against the reference.

Rows are grouped by the benchmark's group (or its name without the provider); within a group,
the speed-up is the reference's median over this row's median, both from the same run. The
reference row is the one whose provider (``extra_info["provider"]``, else the test name) names
the reference in eager mode.

    scripts/bench_table.py .benchmarks/run.json > table.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _provider(b: dict) -> str:
    return str(b.get("extra_info", {}).get("provider") or b.get("param") or b["name"])


def _is_reference(b: dict) -> bool:
    p = _provider(b).lower()
    return ("reference" in p or "torch" in p or "eager" in p) and "compile" not in p


def main(path: str) -> int:
    with open(path) as f:
        data = json.load(f)
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('node', '?')}, {machine.get('cpu', {}).get('brand_raw', '?')}, "
          f"python {machine.get('python_version', '?')}; commit "
          f"{data.get('commit_info', {}).get('id', '?')[:10]}; {data.get('datetime', '')}\n")
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"].split("[")[0]].append(b)
    print("| group | provider | median ms | speed-up vs reference | extra |")
    print("|---|---|---:|---:|---|")
    for group, rows in groups.items():
        ref = next((r for r in rows if _is_reference(r)), None)
        for r in rows:
            med = r["stats"]["median"]
            ratio = f"{ref['stats']['median'] / med:.2f}x" if ref else "n/a"
            extra = {k: v for k, v in r.get("extra_info", {}).items()
                     if k not in ("provider", "torch", "cpu", "commit", "threads")}
            extra_s = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in extra.items())
            print(f"| {group} | {_provider(r)} | {med * 1e3:.3f} | {ratio} | {extra_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
