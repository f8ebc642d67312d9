"""CLI misuse and hostile bundle strings (issue 17, items 8 and 9): each case was a traceback (exit 70)
or a wrong exit code before; each is now one sentence with the documented code."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from bundle_tools import copy_bundle, rehash
from paritybundle.cli import main


def _edit_manifest(bundle: Path, **changes) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    for dotted, value in changes.items():
        parent = manifest
        *path, last = dotted.split("__")
        for key in path:
            parent = parent[key]
        parent[last] = value
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def test_markup_and_escape_sequences_from_a_bundle_are_printed_as_data(digits_bundle, tmp_path, capsys):
    """Was: rich markup in a manifest string or the bundle's path raised MarkupError (exit 70) in verify,
    check and inspect, or silently ate "[oops]"; escape sequences reached the terminal."""
    bundle = copy_bundle(digits_bundle, tmp_path / "[/oops]" / "b")
    _edit_manifest(bundle, version="[/x]\x1b[31mred\x1b]0;title\x07", provenance__params={"evil": "[bold red]x[/]"})
    for command in (["verify"], ["inspect"], ["check", "--env-policy", "warn"], ["env"]):
        assert main([*command, str(bundle)]) == 0, command
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out, command
        if command[0] == "verify":  # the command that prints the path
            assert "[/oops]" in out.replace("\n", ""), command
    assert main(["inspect", str(bundle)]) == 0
    assert "[/x]" in capsys.readouterr().out


@pytest.mark.parametrize("year", ["1900-01-01T00:00:00Z", "2200-01-01T00:00:00Z"])
def test_pack_takes_any_creation_time_the_manifest_holds(digits_bundle, tmp_path, year):
    """Was: a created_at before 1970 or after 2106 crashed pack (gzip and tar mtimes are 32-bit)."""
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    _edit_manifest(bundle, created_at=year)
    assert main(["pack", str(bundle), "-o", str(tmp_path / "b.tar.gz")]) == 0
    assert main(["verify", str(tmp_path / "b.tar.gz")]) == 0


def test_a_graph_that_fails_at_run_time_is_the_bundles_fault_in_check_and_a_finding_in_diff(
    digits_bundle, tmp_path, capsys
):
    """Was: ONNX Runtime failing in session.run (the graph loads, running it does not) was exit 70."""
    import numpy as np

    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    model = onnx.load(str(bundle / "pipeline.onnx"))
    # The last node now feeds a Reshape to a shape no batch can take: the graph loads, every run fails.
    output = model.graph.output[0].name
    last = next(node for node in model.graph.node if output in node.output)
    last.output[list(last.output).index(output)] = output + "_before"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([7, -1, 3], np.int64), "impossible_shape"))
    model.graph.node.append(onnx.helper.make_node("Reshape", [output + "_before", "impossible_shape"], [output]))
    onnx.save(model, str(bundle / "pipeline.onnx"))
    rehash(bundle)
    assert main(["check", str(bundle)]) == 3
    assert "ONNX Runtime could not run the model" in capsys.readouterr().err
    assert main(["diff", str(digits_bundle), str(bundle)]) in (1, 2)
    err = capsys.readouterr()
    assert "Traceback" not in err.err and "internal error" not in err.err


def test_testdata_force_onto_a_file_is_a_usage_error(digits_bundle, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert main(["testdata", str(digits_bundle), "-o", str(target), "--force"]) == 2
    assert "is not a directory" in capsys.readouterr().err and target.read_text() == "keep me"


def test_unwritable_outputs_are_usage_errors(digits_bundle, digits_example, tmp_path, capsys):
    """Was: export, pack, testdata and build-image --context into a place that cannot be written: exit 70.
    (The tests run as root, for whom permissions do not apply: a path under a regular file cannot be written.)"""
    blocker = tmp_path / "file"
    blocker.write_text("")
    script = tmp_path / "spec.py"
    script.write_text(
        "import numpy as np, torch\nfrom paritybundle import ExportSpec\n"
        "def make_spec():\n    return ExportSpec(model=torch.nn.Linear(3, 2), "
        "reference_inputs=np.ones((4, 3), np.float32), name='lin')\n"
    )
    for command in (
        ["export", f"{script}:make_spec", "-o", str(blocker / "b")],
        ["pack", str(digits_bundle), "-o", str(blocker / "b.tar.gz")],
        ["testdata", str(digits_bundle), "-o", str(blocker / "td")],
        ["build-image", str(digits_bundle), "--context", str(blocker / "ctx")],
        ["check", str(digits_bundle), "--json", str(blocker / "r.json")],
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "cannot write" in err and "Traceback" not in err, (command, err)


@pytest.mark.parametrize(
    "args, says",
    [
        (["check", "{b}", "--atol", "nan", "--rtol", "0"], "finite numbers"),
        (["check", "{b}", "--atol", "inf", "--rtol", "0"], "finite numbers"),
        (["check", "{b}", "--output-tolerance", "logits:nan:0"], "finite numbers"),
        (["check", "{b}", "--threads", "100000"], "thread count"),
        (["serve", "{b}", "--log-level", "bogus"], "--log-level 'bogus'"),
        (["serve", "{b}", "--port", "-1"], "is not a port"),
        (["serve", "{b}", "--port", "99999"], "is not a port"),
        (["serve", "{b}", "--host", "no-such-host.invalid", "--port", "0"], "cannot listen on no-such-host.invalid"),
        (["serve", "{b}", "--header-timeout", "0"], "--header-timeout"),
        (["rehearse", "{b}", "--python", "/nonexistent/python"], "cannot run --python"),
    ],
)
def test_bad_options_are_one_sentence_and_exit_2(digits_bundle, args, says, capsys):
    assert main([a.replace("{b}", str(digits_bundle)) for a in args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_serve_on_a_port_in_use_is_a_usage_error_before_anything_listens(digits_bundle):
    """Was: exit 3 ('bundle invalid'), after logging that parity holds (uvicorn's STARTUP_FAILURE)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "paritybundle.cli", "serve", str(digits_bundle), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr[-1000:]
    assert re.search(rf"cannot listen on 127.0.0.1:{port} \(Address already in use\)", done.stderr)
    assert "parity holds" not in done.stderr and "Traceback" not in done.stderr


def test_serve_rehearse_and_env_refuse_a_bundle_path_that_is_a_device(capsys):
    for command in (["serve", "/dev/zero"], ["env", "/dev/zero"], ["inspect", "/dev/zero"]):
        assert main(command) == 2, command
        assert "neither a bundle directory nor an archive file" in capsys.readouterr().err


def test_no_command_crashes_on_an_environment_variable_it_reads(digits_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARITYBUNDLE_MAX_UNPACKED_BYTES", "lots")
    from paritybundle.commands.pack import pack

    archive = pack(digits_bundle, tmp_path / "b.tar.gz")
    assert main(["verify", str(archive)]) == 2
    assert "PARITYBUNDLE_MAX_UNPACKED_BYTES" in capsys.readouterr().err
    monkeypatch.delenv("PARITYBUNDLE_MAX_UNPACKED_BYTES")
    assert os.environ.get("PARITYBUNDLE_MAX_UNPACKED_BYTES") is None
