"""`bundle rehearse` builds a real clean venv from requirements-serve.txt (needs the package index)."""

from __future__ import annotations

import pytest

from bundle_tools import rehash
from paritybundle.commands.rehearsal import rehearse
from paritybundle.errors import EnvironmentRefused


def test_rehearsal_installs_the_lock_and_passes(digits_bundle, tmp_path):
    report = rehearse(digits_bundle, keep=tmp_path / "venv")
    assert report.passed, report.message
    assert report.check is not None and report.check.passed
    # The clean room really lacks torch: the check inside reports it as absent by design.
    assert any(item.what == "torch" and item.running is None for item in report.check.environment.items)
    site = list((tmp_path / "venv" / "lib").glob("python*/site-packages"))[0]
    assert not (site / "torch").exists() and (site / "onnxruntime").exists()
    assert report.install_seconds > 0


def test_rehearsal_reports_pips_reason_and_leaves_the_bundle_alone(bundle_copy, tmp_path):
    requirements = bundle_copy / "requirements-serve.txt"
    requirements.write_text(requirements.read_text() + "paritybundle-no-such-package-xyz==0.0.1\n")
    rehash(bundle_copy)
    before = sorted(p.relative_to(bundle_copy) for p in bundle_copy.rglob("*"))
    with pytest.raises(
        EnvironmentRefused, match="installing requirements-serve.txt .* failed.*paritybundle-no-such-package-xyz"
    ):
        rehearse(bundle_copy)
    assert sorted(p.relative_to(bundle_copy) for p in bundle_copy.rglob("*")) == before
