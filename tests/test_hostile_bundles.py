"""Hostile bundles from the outside red-team pass (issue 17): each case failed on the tree before
the fix; each now ends in one sentence with the documented exit code, and nothing leaks."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle_tools import copy_bundle, rehash
from paritybundle.cli import main


def _external_weight(bundle: Path, location: str) -> None:
    """Point the pipeline's first initializer at external data ``location`` and re-hash the manifest."""
    model = onnx.load(str(bundle / "pipeline.onnx"))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    (bundle / "pipeline.onnx").write_bytes(model.SerializeToString())
    rehash(bundle)


@pytest.mark.parametrize("where", ["climbing", "absolute"])
def test_testdata_never_follows_external_data_out_of_the_bundle(digits_bundle, tmp_path, where, capsys):
    """Was: exit 0, the file read and written outside OUT (climbing), or exit 70 SameFileError (absolute)."""
    secret = tmp_path / "x" / "SECRET.txt"
    secret.parent.mkdir()
    secret.write_text("CI_TOKEN=hunter2")
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    # From the bundle, ../x/SECRET.txt is the secret; from the deeper output folder it lands in out/x/.
    _external_weight(bundle, "../x/SECRET.txt" if where == "climbing" else str(secret))
    out = tmp_path / "out" / "td"
    assert main(["testdata", str(bundle), "-o", str(out)]) == 3
    assert "outside the bundle" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("SECRET.txt")) == [secret]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_every_command_reading_a_graph_refuses_external_data_outside_the_bundle(digits_bundle, tmp_path, capsys):
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    _external_weight(bundle, "../../etc/passwd")
    for command in (
        ["check", str(bundle)],
        ["diff", str(digits_bundle), str(bundle)],
        ["testdata", str(bundle), "-o", str(tmp_path / "td")],
        ["serve", str(bundle), "--port", "0"],
    ):
        assert main(command) == 3, command
        assert "outside the bundle" in capsys.readouterr().err, command
    shutil.rmtree(bundle)


# --- signed bundles: each file read once, verified, and only then used (item 3); keys (item 9) -----


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)  # noqa: E731
    run("openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(folder / "ec.pem"))
    run("openssl", "ec", "-in", str(folder / "ec.pem"), "-pubout", "-out", str(folder / "ec.pub"))
    run("openssl", "genrsa", "-out", str(folder / "rsa.pem"), "2048")
    run("openssl", "rsa", "-in", str(folder / "rsa.pem"), "-pubout", "-out", str(folder / "rsa.pub"))
    return folder


def _signed_copy(digits_bundle: Path, target: Path, keys: Path) -> Path:
    from paritybundle.commands.sign import sign

    bundle = copy_bundle(digits_bundle, target)
    sign(bundle, keys / "ec.pem")
    return bundle


class _Swapper(threading.Thread):
    """Keeps replacing ``path`` (atomically, by rename) with each of ``versions`` in turn."""

    def __init__(self, path: Path, versions: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.path, self.versions, self.stop = path, versions, threading.Event()

    def run(self) -> None:
        # Staged beside the bundle (same file system, so the rename is atomic), not in it: an
        # extra file in the bundle would be refused on its own.
        staging = self.path.parent.parent / f".swap-{self.path.name}"
        staging.mkdir(exist_ok=True)
        turn = 0
        while not self.stop.is_set():
            candidate = staging / f"{turn}"
            candidate.write_bytes(self.versions[turn % len(self.versions)])
            os.replace(candidate, self.path)
            turn += 1

    def __enter__(self) -> _Swapper:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def test_a_manifest_swapped_while_a_signed_bundle_opens_is_never_accepted(digits_bundle, tmp_path, keys):
    """Was: the manifest was parsed from one read and its signature checked on another, so an
    unsigned manifest swapped in between was accepted ('signature verified') in 5 of 20 runs."""
    import json

    from paritybundle.bundle.store import open_bundle
    from paritybundle.errors import BundleInvalid

    bundle = _signed_copy(digits_bundle, tmp_path / "b", keys)
    signed = (bundle / "bundle.json").read_bytes()
    forged = json.loads(signed)
    forged["version"] = "forged"
    accepted = refused = 0
    with _Swapper(bundle / "bundle.json", [signed, json.dumps(forged).encode()]):
        for _ in range(120):
            try:
                version = open_bundle(bundle, keys / "ec.pub").manifest.version
            except BundleInvalid:
                refused += 1
                continue
            assert version == "1", "a manifest whose signature was never checked was accepted"
            accepted += 1
    assert accepted and refused  # both versions were really seen


def test_a_graph_swapped_while_a_signed_bundle_loads_never_runs(digits_bundle, tmp_path, keys):
    """Was: the graph was hashed, then ONNX Runtime opened it again by path: an unverified graph
    ran in 4 of 20 runs."""
    import numpy as np

    import paritybundle
    from bundle_tools import perturb_weights
    from paritybundle.errors import BundleInvalid

    bundle = _signed_copy(digits_bundle, tmp_path / "b", keys)
    other = copy_bundle(digits_bundle, tmp_path / "other")
    perturb_weights(other, 0.5)
    rows = np.load(bundle / "reference" / "inputs.npz")["pixels"][:4]
    expected = paritybundle.load(bundle).predict(rows)["logits"]
    loaded = refused = 0
    with _Swapper(
        bundle / "pipeline.onnx", [(bundle / "pipeline.onnx").read_bytes(), (other / "pipeline.onnx").read_bytes()]
    ):
        for _ in range(40):
            try:
                runtime = paritybundle.load(bundle, public_key=keys / "ec.pub")
            except BundleInvalid:
                refused += 1
                continue
            np.testing.assert_array_equal(runtime.predict(rows)["logits"], expected, "an unverified graph ran")
            loaded += 1
    assert loaded and refused


@pytest.mark.parametrize(
    "key, says",
    [
        ("rsa.pub", "elliptic-curve keys"),
        ("ec.pem", "is a private key"),
        ("rsa.pem", "is a private key"),
        ("garbage", "not a public key in PEM"),
    ],
)
def test_a_key_in_the_wrong_format_is_a_usage_error_not_a_tampered_bundle(
    digits_bundle, tmp_path, keys, key, says, capsys
):
    """Was: exit 3, 'the bundle was changed after signing ... do not deploy it'."""
    bundle = _signed_copy(digits_bundle, tmp_path / "b", keys)
    (keys / "garbage").write_text("not a key\n")
    for command in ("verify", "check"):
        assert main([command, str(bundle), "--key", str(keys / key)]) == 2
        err = capsys.readouterr().err
        assert says in err and "changed after signing" not in err


# --- archives: judged by what they declare, before they cost anything (item 4) --------------------


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, Any]], fmt=tarfile.PAX_FORMAT) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, data)
    return path


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as read (a bomb's payload without holding it)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_member_declaring_more_than_the_manifest_is_refused_before_it_is_unpacked(digits_bundle, tmp_path):
    """Was: a 3.1 MB archive whose model.onnx declared 3 GiB wrote 3 GiB to /tmp before exit 3."""
    from paritybundle.bundle.archive import extract
    from paritybundle.errors import BundleInvalid

    bomb = tmp_path / "bomb.tar.gz"
    info = tarfile.TarInfo("model.onnx")
    info.size = 256 * 1024**2
    _archive(bomb, [_member("bundle.json", (digits_bundle / "bundle.json").read_bytes()), (info, _Zeros(info.size))])
    assert bomb.stat().st_size < 2 * 1024**2
    with pytest.raises(BundleInvalid, match=r"'model.onnx' declares 268435456 bytes but bundle.json says \d+"):
        extract(bomb)


def test_a_member_before_the_manifest_is_refused(digits_bundle, tmp_path, capsys):
    """Was: an unlisted member placed before bundle.json was unpacked (whatever its size) before the
    manifest could say it is not one of the bundle's files."""
    payload = tarfile.TarInfo("payload.bin")
    payload.size = 64 * 1024**2
    evil = _archive(
        tmp_path / "evil.tar.gz",
        [(payload, _Zeros(payload.size)), _member("bundle.json", (digits_bundle / "bundle.json").read_bytes())],
    )
    assert main(["verify", str(evil)]) == 3
    assert "'payload.bin' comes before bundle.json" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["pax header", "GNU long name", "pax digits (CVE-2024-6232)"])
def test_an_oversized_extended_header_is_refused_before_tarfile_reads_it(tmp_path, kind, capsys):
    """Was: a 1 MB archive with a 1 GiB pax header or GNU long name took 1.09 GiB of memory, and a
    pax header of 160k digits 41 s of CPU (quadratic parsing on this Python)."""
    info = tarfile.TarInfo("bundle.json")
    info.size = 2
    if kind == "GNU long name":
        info.name = "a" * (32 * 1024**2)
        path = _archive(tmp_path / "evil.tar.gz", [(info, io.BytesIO(b"{}"))], tarfile.GNU_FORMAT)
    else:
        value = "1" * 160_000 if kind.startswith("pax digits") else "x" * (32 * 1024**2)
        info.pax_headers = {"comment": value}
        path = _archive(tmp_path / "evil.tar.gz", [(info, io.BytesIO(b"{}"))])
    assert main(["verify", str(path)]) == 3
    assert "extended header of" in capsys.readouterr().err


def test_a_bundle_path_that_is_not_a_file_or_directory_is_refused_at_once(tmp_path):
    """Was: `bundle verify /dev/zero` never returned."""
    done = subprocess.run(
        [sys.executable, "-m", "paritybundle.cli", "verify", "/dev/zero"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "neither a bundle directory nor an archive file" in done.stderr


# --- memory judged by what is declared, not by the size on disk (item 5) --------------------------


def _npz_declaring(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """An .npz whose arrays declare ``shape`` (zeros, deflated: megabytes on disk for gigabytes declared)."""
    import numpy as np

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, (shape, dtype) in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(
                    member, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
                )
                chunk = bytes(1024 * 1024)
                left = int(np.prod(shape)) * np.dtype(dtype).itemsize
                while left > 0:
                    member.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)


def test_reference_arrays_declaring_more_samples_than_the_manifest_are_refused_unread(digits_bundle, tmp_path, capsys):
    """Was: a 1.2 MB .npz declaring 1 GiB of rows took 3.86 GiB of memory (--batch-size did not help)."""
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    _npz_declaring(bundle / "reference" / "inputs.npz", {"pixels": ((4_000_000, 64), "<f4")})
    assert (bundle / "reference" / "inputs.npz").stat().st_size < 4_000_000 * 64 * 4 / 100  # megabytes for a gigabyte
    rehash(bundle)
    assert main(["check", str(bundle), "--batch-size", "64"]) == 3
    assert "holds 4000000 samples, but the manifest declares" in capsys.readouterr().err


def test_a_large_declared_reference_set_streams_within_the_budget(digits_bundle, tmp_path):
    """When the manifest agrees (re-hashed), the rows per pass follow the declared bytes, never the file size."""
    import json

    from paritybundle.bundle.store import open_bundle
    from paritybundle.check.sources import STREAM_ABOVE_BYTES, BundleReferences

    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    rows = 2_000_000
    _npz_declaring(bundle / "reference" / "inputs.npz", {"pixels": ((rows, 64), "<f4")})
    _npz_declaring(bundle / "reference" / "outputs.npz", {"logits": ((rows, 10), "<f4")})
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["reference"]["samples"] = rows
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    rehash(bundle)
    source = BundleReferences(open_bundle(bundle))
    row_bytes = (64 + 10) * 4
    assert source.rows_per_pass(None) * row_bytes <= STREAM_ABOVE_BYTES
    assert source.rows_per_pass(64) == 64


@pytest.mark.parametrize(
    "problem, array",
    [
        ("a datetime", ("<M8[s]", (64, 64))),
        ("big-endian", (">f4", (64, 64))),
        ("a structured dtype", ([("a", "<f4")], (64, 64))),
        ("complex", ("<c8", (64, 64))),
        ("0-d", ("<f4", ())),
        ("another width", ("<f4", (64, 63))),
    ],
)
def test_reference_arrays_must_be_what_the_manifest_declares(digits_bundle, tmp_path, problem, array, capsys):
    """Was: testdata crashed (exit 70) on datetime, structured and big-endian arrays, and passed
    complex, string and 0-d ones silently; check compared whatever was there."""
    import numpy as np

    dtype, shape = array
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    np.savez(bundle / "reference" / "inputs.npz", pixels=np.zeros(shape, dtype=dtype))
    rehash(bundle)
    for command in (["testdata", str(bundle), "-o", str(tmp_path / "td")], ["check", str(bundle)]):
        assert main(command) == 3, (problem, command)
        assert "reference/inputs.npz" in capsys.readouterr().err


def test_a_sparse_manifest_is_refused_by_its_size_before_it_is_read(digits_bundle, tmp_path):
    """Was: a sparse 4 GiB bundle.json was read whole (4.1 GiB of memory) before the 16 MiB limit applied."""
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    with open(bundle / "bundle.json", "r+b") as handle:
        handle.truncate(4 * 1024**3)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 * 1024 ** 3, 3 * 1024 ** 3)); "
    done = subprocess.run(
        [sys.executable, "-c", limit + "from paritybundle.cli import main; main()", "verify", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3 and "larger than any the bundle format writes" in done.stderr, done.stderr[-500:]


# --- the manifest: strict, and every number it gives bounded (items 6, 11, 8) ---------------------


def _with_manifest(digits_bundle: Path, target: Path, text: str) -> Path:
    bundle = copy_bundle(digits_bundle, target)
    (bundle / "bundle.json").write_text(text)
    return bundle


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda t: t.replace('"name": "digits"', '"name": "digits", "name": "evil"', 1), "appears twice"),
        (lambda t: t.replace('"format_version": 1', '"format_version": 1, "format_version": 1', 1), "appears twice"),
        (lambda t: re_sub(r'"bytes": (\d+)', r'"bytes": "\1"', t, 1), "valid integer"),
        (lambda t: re_sub(r'"samples": (\d+)', r'"samples": \1.0', t, 1), "valid integer"),
        (
            lambda t: t.replace('"intra_op_num_threads": 0', '"intra_op_num_threads": 100000', 1),
            "less than or equal to 1024",
        ),
        (lambda t: re_sub(r'"atol": [^,]+', '"atol": NaN', t, 1), "finite number"),
        (
            lambda t: t.replace('"params": {', '"params": {"deep": ' + "[" * 100_000 + "]" * 100_000 + ", ", 1),
            "nested too deeply",
        ),
        (lambda t: t.replace('"params": {', '"params": {"huge": ' + "9" * 5000 + ", ", 1), "digits"),
    ],
)
def test_a_manifest_that_is_not_strictly_valid_is_refused_in_one_sentence(digits_bundle, tmp_path, edit, says, capsys):
    """Was: duplicate keys accepted (last wins), "168609" coerced to a number, 100000 threads handed
    to ONNX Runtime (the check hung, 2.1 GiB in 30 s), a 5000-digit integer or deep nesting exit 70."""
    original = (digits_bundle / "bundle.json").read_text()
    bundle = _with_manifest(digits_bundle, tmp_path / "b", edit(original))
    for command in ("verify", "inspect", "check"):
        assert main([command, str(bundle)]) == 3, command
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


def re_sub(pattern: str, replacement: str, text: str, count: int) -> str:
    import re

    return re.sub(pattern, replacement, text, count=count)


extreme_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1", "1e3", "NaN", True, None]),
)


@settings(max_examples=150, deadline=20000, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_any_number_in_a_manifest_ends_in_a_verdict_or_a_documented_error(digits_bundle, data):
    """Hypothesis over every number of a real manifest (threads, bytes, samples, dims, tolerances,
    feature slices): a verdict or one documented error from verify, inspect and check; never exit 70
    or a hang (each example has a deadline)."""
    import json

    document = json.loads((digits_bundle / "bundle.json").read_text())
    numeric = [path for path, value in _number_paths(document)]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(numeric))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(extreme_numbers)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = copy_bundle(digits_bundle, Path(tmp) / "b")
        (bundle / "bundle.json").write_text(json.dumps(document))
        for command in ("verify", "inspect", "check"):
            assert main([command, str(bundle)]) in (0, 1, 3, 4), command


def _number_paths(document, prefix=()):
    if isinstance(document, bool):
        return
    if isinstance(document, (int, float)):
        yield prefix, document
    elif isinstance(document, dict):
        for key, value in document.items():
            yield from _number_paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _number_paths(value, prefix + (index,))


# --- replacing a bundle: never a moment without one; killed runs cleaned up (item 10) -------------


def test_a_forced_replace_never_leaves_the_target_missing(digits_bundle, tmp_path, monkeypatch):
    """Was: --force moved the old bundle aside, then the new one in: between the two renames there
    was no bundle at the target (a server restarting then would not find it)."""
    import paritybundle.bundle.writer as writer
    from paritybundle.bundle.writer import BundleWriter

    target = copy_bundle(digits_bundle, tmp_path / "b")
    seen: list[bool] = []
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def watching_rename(*args, **kwargs):
        real_rename(*args, **kwargs)
        seen.append((target / "bundle.json").is_file())

    def watching_rmtree(*args, **kwargs):
        seen.append((target / "bundle.json").is_file())
        real_rmtree(*args, **kwargs)

    monkeypatch.setattr(os, "rename", watching_rename)
    monkeypatch.setattr(writer.shutil, "rmtree", watching_rmtree)
    manifest = copy_bundle(digits_bundle, tmp_path / "source") / "bundle.json"
    from paritybundle.bundle.manifest import parse_manifest

    with BundleWriter(target, force=True) as staged:
        for rel in parse_manifest(manifest.read_bytes()).files:
            staged.write_bytes(rel, (digits_bundle / rel).read_bytes())
        staged.commit(parse_manifest(manifest.read_bytes()))
    assert seen and all(seen), seen
    assert not list(tmp_path.glob(".b.*"))


def test_staging_of_a_killed_run_is_removed_and_a_live_ones_is_kept(digits_bundle, tmp_path):
    """Was: killed runs left .partial directories behind for good."""
    from paritybundle.commands.pack import pack
    from paritybundle.commands.testdata import write_testdata

    parent = tmp_path / "out"
    parent.mkdir()
    holder = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(600)"
    )
    for name in ("td", "b.tar.gz"):
        dead, live = parent / f".{name}.partial-dead", parent / f".{name}.partial-live"
        dead.mkdir()
        (dead / "junk").write_bytes(bytes(1024))
        live.mkdir()
        hour_ago = time.time() - 3600
        for path in (dead, live):
            os.utime(path, (hour_ago, hour_ago))
        writer = subprocess.Popen([sys.executable, "-c", holder, str(live)], stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "locked"
            if name == "td":
                write_testdata(digits_bundle, parent / "td")
            else:
                pack(digits_bundle, parent / "b.tar.gz")
            assert not dead.exists(), "the staging of a dead run was left behind"
            assert live.exists(), "the staging of a live writer was removed"
        finally:
            writer.kill()
            writer.wait()
