"""Hostile input: random and mutated manifests, archives, byte flips, V2 request bodies.

Each must end in a documented error (a ParityBundleError, hence an exit code) or a 4xx
with a message: zero tracebacks, zero 5xx, zero hangs (a deadline per case). The number
of cases each test ran is printed at the end of the session.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import paritybundle
from bundle_tools import HOSTILE_COUNTS, rehash
from paritybundle.bundle.manifest import parse_manifest
from paritybundle.commands.pack import pack
from paritybundle.errors import BundleInvalid, ParityBundleError

EXAMPLES = int(os.environ.get("PARITYBUNDLE_HOSTILE_EXAMPLES", "150"))
HOSTILE = settings(max_examples=EXAMPLES, deadline=5000, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


def _count(name: str) -> None:
    HOSTILE_COUNTS[name] = HOSTILE_COUNTS.get(name, 0) + 1


def _paths(data, prefix=()):
    """Every path to a value inside nested dicts/lists."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, prefix + (index,))


def _mutate(document, data, values) -> None:
    """One to three random edits inside a JSON document: a value replaced or a key dropped."""
    paths = [p for p in _paths(document) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(values)
        except (KeyError, IndexError, TypeError):
            continue


@pytest.fixture(scope="module")
def manifest_dict(digits_bundle):
    return json.loads((digits_bundle / "bundle.json").read_text())


@HOSTILE
@given(st.data())
def test_mutated_manifests_are_accepted_or_refused_cleanly(manifest_dict, data):
    mutated = copy.deepcopy(manifest_dict)
    _mutate(mutated, data, json_values)
    _count("mutated manifests")
    try:
        manifest = parse_manifest(json.dumps(mutated).encode())
    except BundleInvalid as exc:
        # Refused with the one sentence, and only when the mutation changed something.
        assert str(exc).startswith("bundle.json") and "re-export" in str(exc) and mutated != manifest_dict
    else:
        # Accepted: then it is a manifest in full, and writes back to exactly what it parsed.
        assert parse_manifest(manifest.to_json().encode()) == manifest
        assert manifest.name == mutated.get("name") and set(manifest.files) == set(mutated.get("files", {}))


@HOSTILE
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)))
def test_random_manifests_are_refused_cleanly(raw):
    _count("random manifests")
    with pytest.raises(BundleInvalid, match=r"^bundle\.json .*re-export"):
        parse_manifest(raw)


@pytest.fixture(scope="module")
def archive_bytes(digits_bundle, tmp_path_factory):
    return pack(digits_bundle, tmp_path_factory.mktemp("archive") / "digits.tar.gz").read_bytes()


@HOSTILE
@given(st.data())
def test_mutated_and_random_archives_are_refused_cleanly(archive_bytes, data):
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice", "random"]))
    blob = bytearray(archive_bytes)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "splice":
        at = data.draw(st.integers(0, len(blob)))
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        blob = bytearray(data.draw(st.binary(max_size=2000)))
    _count("mutated/random archives")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.tar.gz"
        path.write_bytes(bytes(blob))
        try:
            paritybundle.verify(path)
        except ParityBundleError:
            pass


def _files(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def signed_bundle(digits_bundle, tmp_path_factory):
    import subprocess

    from paritybundle.commands.sign import sign

    directory = tmp_path_factory.mktemp("signed")
    private, public = directory / "k.pem", directory / "k.pub"
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(private)], check=True)
    subprocess.run(
        ["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)], check=True, capture_output=True
    )
    bundle = directory / "bundle"
    shutil.copytree(digits_bundle, bundle)
    sign(bundle, private)
    return bundle, public


@HOSTILE
@given(st.data())
def test_byte_flips_in_every_file_are_caught(signed_bundle, data):
    source, public = signed_bundle
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b"
        shutil.copytree(source, bundle)
        victim = data.draw(st.sampled_from(_files(bundle)))
        raw = bytearray((bundle / victim).read_bytes())
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        (bundle / victim).write_bytes(bytes(raw))
        _count("byte flips in a signed bundle (verify --key)")
        # Signed: a flip anywhere, bundle.json and bundle.sig included, is refused.
        with pytest.raises(BundleInvalid, match=r"bundle\.sig|does not match|bundle\.json"):
            paritybundle.verify(bundle, public)
        if victim not in ("bundle.json", "bundle.sig"):
            # Unsigned: the hashes alone catch a flip in every listed file. (bundle.json itself is the
            # root of trust: a flip that keeps it valid is only caught with a signature; SECURITY.md.)
            _count("byte flips in a listed file (verify)")
            with pytest.raises(BundleInvalid, match=re.escape(victim)):
                paritybundle.verify(bundle)
            if data.draw(st.booleans()):
                # A careless "fix": the manifest re-hashed over the flipped byte. The check must then end
                # in a verdict or a documented error, never a crash.
                (bundle / "bundle.sig").unlink()
                rehash(bundle)
                _count("byte flips, re-hashed (check)")
                try:
                    paritybundle.check(bundle, env_policy="warn")
                except ParityBundleError:
                    pass


@pytest.fixture(scope="module")
def client(digits_bundle):
    from starlette.testclient import TestClient

    from paritybundle.serving.app import create_app
    from paritybundle.serving.state import ServeOptions

    with TestClient(create_app(ServeOptions(bundle=str(digits_bundle)))) as test_client:
        assert test_client.get("/v2/health/ready").status_code == 200
        yield test_client


VALID = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


@HOSTILE
@given(st.data())
def test_random_v2_bodies_get_4xx_never_5xx(client, data):
    kind = data.draw(st.sampled_from(["random json", "mutated valid", "bytes"]))
    if kind == "random json":
        body = json.dumps(data.draw(json_values)).encode()
    elif kind == "bytes":
        body = data.draw(st.binary(max_size=500))
    else:
        mutated = copy.deepcopy(VALID)
        field = data.draw(st.sampled_from(["name", "shape", "datatype", "data", "extra", "inputs"]))
        value = data.draw(json_values)
        if field == "inputs":
            mutated["inputs"] = value
        else:
            mutated["inputs"][0][field] = value
        body = json.dumps(mutated).encode()
    _count("random V2 request bodies")
    response = client.post("/v2/models/digits/infer", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.json()["error"]


SERVING_MODULES = [p for p in Path(paritybundle.__file__).parent.rglob("*.py") if "training" not in p.parts]
FORBIDDEN = re.compile(
    r"import pickle|from pickle|pickle\.loads?\(|cPickle|\bdill\b|joblib\.load|torch\.load|"
    r"allow_pickle\s*=\s*True|(?<![.\w])eval\(|(?<![.\w])exec\(|import torch|from torch"
)


@pytest.mark.parametrize("module", SERVING_MODULES, ids=lambda p: p.name)
def test_serving_modules_never_unpickle_or_eval(module):
    hits = [line for line in module.read_text().splitlines() if FORBIDDEN.search(line)]
    assert not hits, hits


# --- bundles with preprocessing: their extra graph, features and manifest section ---------------


PREPROCESS_EXAMPLES = max(EXAMPLES // 3, 10)


def _check_and_diff(bundle: Path, reference: Path) -> None:
    """A verdict or a documented error from check and from diff, never a crash."""
    from paritybundle.commands.diff import diff

    for action in (lambda: paritybundle.check(bundle, env_policy="warn"), lambda: diff(reference, bundle)):
        try:
            action()
        except ParityBundleError:
            pass


@settings(max_examples=PREPROCESS_EXAMPLES, deadline=20000, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_rehashed_byte_flips_in_a_bundle_with_preprocessing_end_cleanly(wine_bundle, data):
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b"
        shutil.copytree(wine_bundle, bundle)
        victim = data.draw(
            st.sampled_from(
                ["preprocess.onnx", "pipeline.onnx", "model.onnx", "reference/features.npz", "reference/inputs.npz"]
            )
        )
        raw = bytearray((bundle / victim).read_bytes())
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        (bundle / victim).write_bytes(bytes(raw))
        rehash(bundle)
        _count("byte flips with preprocessing, re-hashed (check, diff)")
        _check_and_diff(bundle, wine_bundle)


def test_a_graph_name_that_is_not_utf8_ends_cleanly_in_diff_and_testdata(wine_bundle, tmp_path):
    """protobuf hands back bytes for a string field that is not UTF-8; diff sorted operator names
    and crashed (TypeError, exit 70) when hypothesis flipped such a byte."""
    from paritybundle.commands.diff import diff
    from paritybundle.commands.testdata import write_testdata

    bundle = tmp_path / "b"
    shutil.copytree(wine_bundle, bundle)
    # Only preprocess.onnx: the pipeline still loads, so diff gets as far as summarising the graphs.
    raw = (bundle / "preprocess.onnx").read_bytes()
    op_type = b'"\x03Sub'  # NodeProto field 4 (op_type), 3 bytes long
    assert op_type in raw
    (bundle / "preprocess.onnx").write_bytes(raw.replace(op_type, b'"\x03S\x96b', 1))
    rehash(bundle)
    report = diff(wine_bundle, bundle, expect_change=True)
    assert any("S\\x96b" in op for g in report.graphs for side in (g.a, g.b) if side for op in side.operators)
    try:
        write_testdata(bundle, tmp_path / "td")
    except ParityBundleError:
        pass


@settings(max_examples=PREPROCESS_EXAMPLES, deadline=20000, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_preprocessing_manifest_sections_end_cleanly(wine_bundle, data):
    manifest = json.loads((wine_bundle / "bundle.json").read_text())
    _mutate(
        manifest["preprocessing"],
        data,
        json_values | st.sampled_from(["features", "alcohol", "scores", [0, 99], [2, 1]]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b"
        shutil.copytree(wine_bundle, bundle)
        (bundle / "bundle.json").write_text(json.dumps(manifest))
        _count("mutated preprocessing sections (check, diff)")
        _check_and_diff(bundle, wine_bundle)


# --- issue 17: hypothesis over archive headers, and over a batch with one hostile request ----------


@pytest.fixture(scope="module")
def packed_tar(digits_bundle, tmp_path_factory):
    import gzip

    archive = pack(digits_bundle, tmp_path_factory.mktemp("packed") / "digits.tar.gz")
    return gzip.decompress(archive.read_bytes())


@settings(max_examples=EXAMPLES, deadline=10000, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_archive_headers_end_in_a_verdict_or_bundle_invalid(packed_tar, data):
    """Byte edits inside the tar headers (names, modes, sizes, type flags, checksums of the first
    members, extended headers): the archive is accepted whole or refused with exit 3."""
    import gzip

    raw = bytearray(packed_tar)
    headers = [offset for offset in range(0, min(len(raw), 4096), 512)]
    for _ in range(data.draw(st.integers(1, 4))):
        block = data.draw(st.sampled_from(headers))
        position = block + data.draw(st.integers(0, 511))
        raw[position] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "a.tar.gz"
        archive.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
        _count("mutated archive headers")
        try:
            paritybundle.verify(archive)
        except BundleInvalid:
            pass


@pytest.fixture(scope="module")
def wine_row(wine_bundle):
    import numpy as np

    raw = np.load(wine_bundle / "reference" / "inputs.npz")
    return {name: raw[name][:1] for name in raw.files}


def _wine_body(row, replace: dict | None = None) -> bytes:
    inputs = []
    for name, values in row.items():
        datatype = "BYTES" if values.dtype.kind == "U" else "FP32"
        data = [str(v) for v in values.reshape(-1)] if datatype == "BYTES" else values.reshape(-1).tolist()
        inputs.append({"name": name, "shape": list(values.shape), "datatype": datatype, "data": data})
    body = json.dumps({"inputs": inputs})
    for old, new in (replace or {}).items():
        body = body.replace(old, new, 1)
    return body.encode()


hostile_requests = st.one_of(
    st.just({'"data": ["': '"data": ["\\ud83d'}),  # a lone surrogate in a category
    st.just({'"data": ["': '"data": [5, "'}),  # a number among strings
    st.just({'"shape": [1]': '"shape": [2]'}),  # a shape that does not match the data
    st.just({'"datatype": "FP32"': '"datatype": "INT64"'}),  # a datatype the model does not take
    st.just({'"inputs": [': '"inputs": [{"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}, '}),
    st.text(max_size=8).map(lambda t: {'"name": "': '"name": "' + t}),  # a renamed input
    st.floats(allow_nan=False).map(lambda f: {'"data": [': f'"data": [{json.dumps(f * 1e300)}, '}),
)


@settings(max_examples=max(EXAMPLES // 5, 15), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_one_hostile_request_among_good_ones_never_costs_them_their_answer(wine_bundle, wine_row, data):
    """Requests are batched together; whatever one of them holds, every good one still gets 200
    with its own answer, and the hostile one gets a 4xx (or 200 if it was valid after all)."""
    import asyncio

    import httpx

    from paritybundle.serving.app import create_app
    from paritybundle.serving.state import ServeOptions

    hostile = _wine_body(wine_row, data.draw(hostile_requests))
    position = data.draw(st.integers(0, 12))
    bodies = [_wine_body(wine_row)] * 12
    bodies.insert(position, hostile)
    app = create_app(ServeOptions(bundle=str(wine_bundle), max_batch_delay_ms=20))

    async def send_all() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http_client:
                return await asyncio.gather(
                    *(
                        http_client.post(
                            "/v2/models/wine/infer", content=body, headers={"Content-Type": "application/json"}
                        )
                        for body in bodies
                    )
                )

    answers = asyncio.run(send_all())
    _count("batches with one hostile request")
    good = [a for k, a in enumerate(answers) if k != position]
    assert [a.status_code for a in good] == [200] * len(good), [a.text for a in good if a.status_code != 200][:1]
    # The same row gets the same answer, up to the float noise of the batch it shared (the tolerance bounds it).
    import numpy as np

    scores = np.array([a.json()["outputs"][0]["data"] for a in good])
    np.testing.assert_allclose(scores, np.broadcast_to(scores[0], scores.shape), atol=1e-4, rtol=1e-3)
    assert answers[position].status_code < 500, answers[position].text
