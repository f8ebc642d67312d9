"""`bundle check --junit` and `--html`: native CI reports, and a page checked in a real browser."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from conftest import skip_or_fail  # noqa: E402

from bundle_tools import copy_bundle, edit_preprocess, perturb_weights, replace_initializer
from paritybundle.cli import main


def cases(path):
    suite = ET.parse(path).getroot().find("testsuite")
    return suite, {case.get("name"): case for case in suite.findall("testcase")}


def test_junit_has_one_case_per_check(wine_bundle, tmp_path, capsys):
    assert main(["check", str(wine_bundle), "--junit", str(tmp_path / "j.xml")]) == 0
    suite, found = cases(tmp_path / "j.xml")
    assert {
        "integrity",
        "environment",
        "parity[scores]",
        "decision[scores]",
        "stage[preprocess].column[alcohol]",
        "stage[preprocess].column[color_band]",
        "stage[model].output[scores]",
        "stage[merge].output[scores]",
    } <= set(found)
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(found)
    capsys.readouterr()


def test_junit_marks_the_failing_checks(image_bundle, tmp_path, capsys):
    bundle = copy_bundle(image_bundle, tmp_path / "b")
    edit_preprocess(bundle, lambda m: replace_initializer(m, "channel_order/order", lambda a: a[::-1]))
    assert main(["check", str(bundle), "--junit", str(tmp_path / "j.xml")]) == 1
    suite, found = cases(tmp_path / "j.xml")
    failing = {name for name, case in found.items() if case.find("failure") is not None}
    assert failing == {
        "parity[logits]",
        "decision[logits]",
        "stage[preprocess].column[image]",
        "stage[preprocess].output[pixels]",
        "stage[rows alone].output[logits]",
    }
    assert "preprocessing diverged" in suite.find("system-out").text
    capsys.readouterr()


def test_junit_reports_a_check_that_could_not_run(bundle_copy, tmp_path, capsys):
    (bundle_copy / "model.onnx").write_bytes(b"x")
    assert main(["check", str(bundle_copy), "--junit", str(tmp_path / "j.xml")]) == 3
    _, found = cases(tmp_path / "j.xml")
    error = found["bundle check"].find("error")
    assert error.get("type") == "exit 3" and "model.onnx" in error.get("message")
    capsys.readouterr()


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_page_has_a_plot_per_output_and_the_verdict(bundle_copy, digits_bundle, tmp_path, capsys):
    assert main(["check", str(digits_bundle), "--html", str(tmp_path / "ok.html")]) == 0
    page = Page()
    page.feed((tmp_path / "ok.html").read_text())
    text = " ".join(page.text)
    assert page.tags.count("svg") == 2 and "script" not in page.tags and "link" not in page.tags  # self-contained
    assert "PARITY HOLDS" in text and "atol 0.0001" in text and "rtol 0.001" in text
    perturb_weights(bundle_copy, relative_noise=0.001)
    assert main(["check", str(bundle_copy), "--html", str(tmp_path / "bad.html")]) == 1
    bad = (tmp_path / "bad.html").read_text()
    assert "PARITY FAILS: output &#x27;logits&#x27; failed" in bad and "failing samples, worst first" in bad
    capsys.readouterr()


def test_html_page_renders_in_headless_chromium(wine_bundle, tmp_path, capsys):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        skip_or_fail("no Chromium here (apt-get install chromium; .ci/run installs it)")
    page = tmp_path / "report.html"
    assert main(["check", str(wine_bundle), "--html", str(page)]) == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1000:]
    # What the browser built: the verdict, both plots with their tolerance lines, the stages table.
    assert "PARITY HOLDS" in dom.stdout and dom.stdout.count("<svg") == 2 and "stroke-dasharray" in dom.stdout
    assert "column color_band" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, "--window-size=1300,1600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000  # not a blank page
    capsys.readouterr()
