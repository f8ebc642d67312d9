"""How strong a verdict is: per defect and benign case (tests/verdict_cases.py), the verdict, the
margin (the worst element's share of its tolerance: > 1 fails) and the smallest relative weight
perturbation the bundle's reference set detects (0.1%, 1%, or neither).

``python -m bench verdict`` prints the table in the closing note and docs/concepts/parity.md. Not a timing:
what it measures is what the check can see.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ._common import print_table

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (0.001, 0.01)


def _run(case) -> tuple[bool, float]:
    from verdict_cases import margin

    import paritybundle
    from paritybundle.commands.diff import diff
    from paritybundle.runtime.session import SessionOverrides

    if case.command[0] == "diff":
        report = diff(case.bundle, case.other)
        return report.passed, margin(report)
    options = dict(
        zip(case.command[1::2], case.command[2::2], strict=False)
    )  # option/value pairs; a trailing switch has none
    settings = SessionOverrides(
        intra_op_num_threads=int(options["--threads"]) if "--threads" in options else None,
        graph_optimization_level=options.get("--optimization"),
    )
    report = paritybundle.check(case.bundle, settings=settings)
    return report.passed, margin(report)


def detected_perturbation(bundle: Path, work: Path) -> str:
    """The smallest of LEVELS whose weight noise (relative to each weight tensor's spread) fails the check."""
    import paritybundle
    from bundle_tools import copy_bundle, perturb_weights

    for level in LEVELS:
        copy = copy_bundle(bundle, work / f"{bundle.name}-power-{level}")
        perturb_weights(copy, relative_noise=level)
        if not paritybundle.check(copy).passed:
            return f"{level:.1%}"
    return "neither"


def main() -> list[tuple[str, str, str, str]]:
    sys.path.insert(0, str(ROOT / "tests"))
    import logging

    from verdict_cases import build_cases
    from verdict_cases_27 import build_cases_27

    logging.getLogger("paritybundle").setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        powers: dict[Path, str] = {}
        for case in [*build_cases(work / "cases"), *build_cases_27(work / "cases-27")]:
            passed, worst = _run(case)
            expected = "fail" if case.defect else "pass"
            verdict = ("fails" if not passed else "passes") + ("" if (not passed) == case.defect else " (WRONG)")
            if not case.defect and case.bundle not in powers:
                powers[case.bundle] = detected_perturbation(case.bundle, work / "power")
            rows.append((case.name, f"{verdict} (should {expected})", f"{worst:.3g}", powers.get(case.bundle, "")))
    print_table(
        "verdict: defect and benign cases",
        rows,
        header=("case", "verdict", "margin (share of tolerance)", "smallest weight noise detected"),
    )
    return rows


if __name__ == "__main__":
    main()
