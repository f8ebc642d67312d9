"""JUnit XML of a check, so CI systems show each check as a native test result.

One test case per check: integrity, environment, each output's parity, each score
output's decision agreement, and (with preprocessing) each stage and column.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..check.results import CheckReport
from ..parity.explain import explain_failure
from ..parity.results import OutputComparison
from .strength import coverage_lines, power_sentence

SUITE = "paritybundle.check"


def _case(
    suite: ET.Element,
    name: str,
    seconds: float = 0.0,
    *,
    failure: str | None = None,
    skipped: str | None = None,
    detail: str | None = None,
) -> None:
    case = ET.SubElement(suite, "testcase", classname=SUITE, name=name, time=f"{seconds:.3f}")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure[:1000], type="ParityFailure").text = detail or failure
    elif skipped is not None:
        ET.SubElement(case, "skipped", message=skipped)
    if detail and failure is None:
        ET.SubElement(case, "system-out").text = detail


def _summary(c: OutputComparison) -> str:
    s = c.stats
    if s is None:
        return c.problem or ""
    return (
        f"max abs {s.max_abs:.3g}, p99 abs {s.p99_abs:.3g}, max rel {s.max_rel:.3g}, "
        f"{s.violations}/{s.elements} outside atol {c.tolerance.atol:g} + rtol {c.tolerance.rtol:g}*|research|"
    )


def junit_xml(report: CheckReport) -> str:
    """The report as a JUnit ``<testsuites>`` document."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"{SUITE}: {report.bundle.name} v{report.bundle.version}",
        timestamp=report.checked_at.isoformat(),
        time=f"{report.duration_s:.3f}",
    )
    _case(suite, "integrity", detail=f"{report.bundle.files_verified} files verified against bundle.json")
    if report.environment is None:
        _case(suite, "environment", skipped="the answers came from a live endpoint; its environment is not visible")
    else:
        drift = report.environment
        detail = "; ".join(f"{i.severity}: {i.what} {i.locked} -> {i.running}" for i in drift.items) or "no drift"
        _case(suite, "environment", detail=f"policy {drift.policy}: {detail}")
    for c in report.outputs:
        _case(
            suite,
            f"parity[{c.name}]",
            failure=None if c.passed and not c.problem else explain_failure(c),
            detail=_summary(c),
        )
        if c.decision is not None:
            d = c.decision
            text = (
                f"argmax agrees on {d.agreement:.2%} of {d.samples} {d.unit} (min {d.min_agreement:.0%}); "
                f"{d.ties} decided as near ties (at most {d.max_tie_share:.0%} may be)"
            )
            _case(suite, f"decision[{c.name}]", failure=None if d.passed else explain_failure(c), detail=text)
    for stage in report.stages:
        if stage.stage == "pipeline":
            continue  # the parity[...] cases above
        if stage.columns:
            for column in stage.columns:
                c = column.comparison
                _case(
                    suite,
                    f"stage[{stage.stage}].column[{column.input}]",
                    failure=None if c.passed else explain_failure(c),
                    detail=_summary(c),
                )
        for c in stage.outputs:
            _case(
                suite,
                f"stage[{stage.stage}].output[{c.name}]",
                failure=None if c.passed else explain_failure(c),
                detail=_summary(c),
            )
    # How strong the verdict is: power passes when measured and something was detected, is skipped
    # (with why) otherwise; coverage is a record, never a failure.
    if report.power is not None and report.power.detected is not None:
        _case(suite, "detection power", detail=power_sentence(report.power))
    else:
        _case(suite, "detection power", skipped=power_sentence(report.power))
    _case(suite, "coverage", detail="\n".join(coverage_lines(report.coverage)))
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    suite.set("errors", "0")
    if report.diagnosis:
        ET.SubElement(suite, "system-out").text = report.diagnosis
    return _document(suites)


def junit_error(command: str, message: str, exit_code: int) -> str:
    """A one-case JUnit document for a check that could not produce a report (exit 2/3/4)."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name=SUITE, tests="1", failures="0", errors="1", skipped="0")
    case = ET.SubElement(suite, "testcase", classname=SUITE, name=command)
    ET.SubElement(case, "error", message=message[:1000], type=f"exit {exit_code}").text = message
    return _document(suites)


def _document(suites: ET.Element) -> str:
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
