"""The CLI: one sentence and the documented exit code for every expected failure."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bundle_tools import perturb_weights
from paritybundle.cli import main


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_exits_0_and_prints_the_table(digits_bundle, capsys):
    code, out, _ = run(["check", digits_bundle], capsys)
    assert code == 0
    assert "logits" in out and "PASS" in out and "PARITY HOLDS" in out


def test_check_exits_1_on_perturbed_weights_and_names_the_output(bundle_copy, capsys):
    perturb_weights(bundle_copy, relative_noise=0.001)
    code, out, _ = run(["check", bundle_copy], capsys)
    assert code == 1
    assert "output 'logits' failed" in out and "PARITY FAILS: logits" in out


def test_check_exits_3_on_a_tampered_bundle(bundle_copy, capsys):
    path = bundle_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = run(["check", bundle_copy], capsys)
    assert code == 3 and "model.onnx does not match its sha256" in err
    assert "Traceback" not in err


def test_check_exits_2_for_a_missing_path(tmp_path, capsys):
    code, _, err = run(["check", tmp_path / "nope"], capsys)
    assert code == 2 and "does not exist" in err


def test_check_exits_3_for_a_manifest_missing_a_key(bundle_copy, capsys):
    data = json.loads((bundle_copy / "bundle.json").read_text())
    del data["tolerance"]
    (bundle_copy / "bundle.json").write_text(json.dumps(data))
    code, _, err = run(["check", bundle_copy], capsys)
    assert code == 3 and "tolerance: Field required" in err


def test_check_json_report_is_written_and_parses(digits_bundle, tmp_path, capsys):
    target = tmp_path / "report.json"
    code, _, _ = run(["check", digits_bundle, "--json", target], capsys)
    report = json.loads(target.read_text())
    assert code == 0 and report["schema_version"] == 1 and report["passed"] is True
    assert report["outputs"][0]["name"] == "logits" and report["outputs"][0]["stats"]["violations"] == 0


def test_check_with_ort_settings_and_override(digits_bundle, capsys):
    code, out, _ = run(
        ["check", digits_bundle, "--threads", "1", "--optimization", "basic", "--output-tolerance", "logits:1e-3:1e-2"],
        capsys,
    )
    assert code == 0 and "optimization basic" in out and "0.001 / 0.01 *" in out


def test_bad_cli_arguments_exit_2(digits_bundle, capsys):
    code, _, _ = run(["check", digits_bundle, "--optimization", "turbo"], capsys)
    assert code == 2
    code, _, err = run(["check", digits_bundle, "--atol", "1e-3"], capsys)
    assert code == 2 and "--atol and --rtol go together" in err
    code, _, _ = run(["frobnicate"], capsys)
    assert code == 2


def test_verify_and_inspect(digits_bundle, capsys):
    code, out, _ = run(["verify", digits_bundle], capsys)
    assert code == 0 and "6 files" in out
    code, out, _ = run(["inspect", digits_bundle], capsys)
    assert code == 0 and "[batch, 64]" in out and "test_accuracy" in out and "atol 0.0001" in out
    code, out, _ = run(["inspect", digits_bundle, "--json", "-"], capsys)
    assert code == 0 and json.loads(out)["name"] == "digits"
    # A torch export measured torch against ONNX Runtime, and says so.
    assert "export-time error, torch vs ONNX Runtime" in " ".join(run(["inspect", digits_bundle], capsys)[1].split())


def test_inspect_and_env_write_json_to_a_file_as_check_does(digits_bundle, tmp_path, capsys):
    code, out, _ = run(["inspect", digits_bundle, "--json", tmp_path / "manifest.json"], capsys)
    assert code == 0 and out == "" and json.loads((tmp_path / "manifest.json").read_text())["name"] == "digits"
    code, out, _ = run(["env", digits_bundle, "--json", tmp_path / "lock.json"], capsys)
    assert code == 0 and out == "" and "distributions" in json.loads((tmp_path / "lock.json").read_text())


def test_version_prints_the_packages_version(capsys):
    from paritybundle import __version__

    for flag in ("--version", "-V"):
        code, out, _ = run([flag], capsys)
        assert code == 0 and out == f"paritybundle {__version__}\n"


def test_help_shows_switches_without_a_value_type(capsys):
    """A switch takes no value: `--require-signature <bool>` read as if it needed one."""
    code, out, _ = run(["check", "--help"], capsys)
    assert code == 0
    lines = {line.split()[1]: line for line in out.splitlines() if line.strip("│ ").startswith("--")}
    assert "<bool>" not in lines["--require-signature"] and "<bool>" not in lines["--help"]
    assert "<path>" in lines["--json"], "an option taking a value still shows its type"


def test_export_bad_spec_path_exits_2(tmp_path, capsys):
    code, _, err = run(["export", tmp_path / "missing.py:make", "-o", tmp_path / "b"], capsys)
    assert code == 2 and "missing.py does not exist" in err


def test_export_spec_returning_wrong_type_exits_2(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text("def make_spec():\n    return {'model': None}\n")
    code, _, err = run(["export", f"{script}:make_spec", "-o", tmp_path / "b"], capsys)
    assert code == 2 and "gave a dict, not a paritybundle.ExportSpec" in err
    assert not (tmp_path / "b").exists()


def test_export_spec_missing_attribute_exits_2(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text("x = 1\n")
    code, _, err = run(["export", f"{script}:make_spec", "-o", tmp_path / "b"], capsys)
    assert code == 2 and "has no attribute 'make_spec'" in err


def test_export_spec_by_module_name(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_training.py").write_text(
        textwrap.dedent("""
        import numpy as np, torch
        from paritybundle import ExportSpec
        def make_spec():
            torch.manual_seed(0)
            return ExportSpec(model=torch.nn.Linear(3, 2), reference_inputs=np.ones((4, 3), np.float32), name="lin")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run(["export", "my_training:make_spec", "-o", tmp_path / "b", "--max-samples", "2"], capsys)
    assert code == 0 and "2 reference samples" in out


def test_a_bug_is_exit_70_with_the_traceback_and_a_request_to_report_it(digits_bundle, monkeypatch, capsys):
    """The one path for what is not an expected failure: exit 70 (EX_SOFTWARE), the trace, one line asking for a report."""
    import importlib

    checks = importlib.import_module("paritybundle.check.checks")  # `paritybundle.check` is also a function

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(checks, "make_report", broken)
    code, _, err = run(["check", str(digits_bundle)], capsys)
    assert code == 70
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "internal error: this is a bug in paritybundle; please report it with the traceback above." in " ".join(
        err.split()
    )  # rich wraps the line at the terminal width


def test_a_model_the_exporter_cannot_convert_exits_5_with_the_exporters_reason(tmp_path, capsys):
    """Not the caller's typo (2), not parity (1): the exporter failed, and its reason is the sentence."""
    (tmp_path / "train.py").write_text(
        textwrap.dedent("""
        import numpy as np, torch
        from paritybundle import ExportSpec
        class DataDependent(torch.nn.Module):
            def forward(self, x):
                return x * 2 if x.sum() > 0 else x
        def make_spec():
            return ExportSpec(model=DataDependent(), reference_inputs=np.ones((4, 3), np.float32), name="dd")
    """)
    )
    code, _, err = run(["export", f"{tmp_path / 'train.py'}:make_spec", "-o", tmp_path / "b"], capsys)
    assert code == 5 and "could not convert DataDependent" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_export_then_check_through_the_installed_command(tmp_path, digits_example):
    """The real console script, in a subprocess, as a user runs it (a CPU-cheap model)."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(digits_example.__file__.rsplit("/", 1)[0])!r})
        from train import make_spec as full
        def make_spec():
            return full(epochs=1)
    """)
    )
    bundle = tmp_path / "digits"
    # The console script pip installed beside this interpreter, not `python -m`: its entry point is under test.
    command = Path(sys.executable).parent / "bundle"
    assert command.is_file(), f"the `bundle` console script is not installed at {command}"
    exported = subprocess.run(
        [str(command), "export", f"{script}:make_spec", "-o", str(bundle)], capture_output=True, text=True, timeout=300
    )
    assert exported.returncode == 0, exported.stderr
    checked = subprocess.run([str(command), "check", str(bundle)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "PARITY HOLDS" in checked.stdout, checked.stdout + checked.stderr
    perturbed = subprocess.run(
        [str(Path(sys.executable).parent / "paritybundle"), "verify", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert perturbed.returncode == 0  # the second name of the same entry point
