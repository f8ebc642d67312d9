"""Two sides, one boundary: the serving side works with torch import blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Runs the CLI with `import torch` (and the exporter's onnxscript) made impossible.
BLOCKED = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None        # any `import torch` now raises ImportError
    sys.modules["onnxscript"] = None
    from paritybundle.cli import main
    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxscript") and sys.modules[m] is not None)
    print("LOADED=" + repr(loaded))
    sys.exit(code)
""")


def _run_blocked(*args):
    return subprocess.run([sys.executable, "-c", BLOCKED, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_serving_import_does_not_load_torch():
    probe = (
        "import paritybundle, paritybundle.check.checks, paritybundle.reports.terminal, paritybundle.cli, "
        "paritybundle.runtime.drift, paritybundle.commands.rehearsal, paritybundle.serving.app, sys; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxscript'))))"
    )
    result = subprocess.run([sys.executable, "-c", "import json; " + probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_check_verify_inspect_work_with_torch_import_blocked(digits_bundle):
    for command in (["check"], ["verify"], ["inspect"], ["env"], ["env", "diff"]):
        result = _run_blocked(*command, digits_bundle)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "LOADED=[]" in result.stdout


def test_a_bundle_with_preprocessing_checks_by_stage_with_torch_import_blocked(wine_bundle):
    """String categories, imputation and the stage-by-stage check need onnxruntime only."""
    result = _run_blocked("check", wine_bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "preprocess.onnx" in result.stdout and "LOADED=[]" in result.stdout


def test_export_without_torch_says_how_to_install_it(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "from paritybundle import ExportSpec\ndef make_spec():\n    return ExportSpec(model=None, reference_inputs=[[1.0]], name='x')\n"
    )
    result = _run_blocked("export", f"{script}:make_spec", "-o", tmp_path / "b")
    assert result.returncode == 2
    assert "pip install 'paritybundle[train]'" in result.stderr and "Traceback" not in result.stderr


def test_serve_works_with_torch_import_blocked(digits_bundle, tmp_path):
    """Any `import torch` raises here, so a server that becomes ready and answers never imported it."""
    import numpy as np
    from serving_tools import torch_blocked_server

    with torch_blocked_server(digits_bundle, tmp_path) as server:
        row = np.zeros((1, 64), np.float32)
        status, _ = server.post(
            "/v2/models/digits/infer",
            {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row.reshape(-1).tolist()}]},
        )
        assert status == 200
