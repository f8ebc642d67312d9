"""Per-module mutation score from mutmut's results (``make mutation`` prints it; docs/mutation.md keeps one).

    python scripts/mutation_report.py            # reads `mutmut results --all true` in this directory

A mutant is *killed* when a test failed (or timed out) with it in place; *survived* when every test that
reaches its function passed; *no tests* when no selected test reaches its function at all.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys


def main() -> int:
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True
    ).stdout
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in listing.splitlines():
        match = re.match(r"\s*(paritybundle\.[\w.]+?)\.x[_ǁ].*__mutmut_\d+: (.+)$", line.strip())
        if match:
            counts[match.group(1)][match.group(2).strip()] += 1
    print("| module | mutants | killed | survived | no tests | score |")
    print("| --- | --- | --- | --- | --- | --- |")
    total: collections.Counter = collections.Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        print(_row(module, c))
    print(_row("**all**", total))
    return 0


def _row(module: str, c: collections.Counter) -> str:
    killed = c["killed"] + c["timeout"]
    mutants = sum(c.values())
    return (
        f"| {module} | {mutants} | {killed} | {c['survived']} | {c['no tests']} | {killed / mutants:.0%} |"
        if mutants
        else f"| {module} | 0 | | | | |"
    )


if __name__ == "__main__":
    sys.exit(main())
