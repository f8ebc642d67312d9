"""The reference set in formats other tools read: ONNX test data and Polygraphy JSON.

``bundle testdata BUNDLE -o DIR`` writes::

    DIR/model.onnx                     the bundle's pipeline graph (outputs: the declared ones, in order)
    DIR/model.onnx.data                its external weights, when it has any
    DIR/test_data_set_K/input_I.pb     TensorProto of graph input I (named), samples of set K
    DIR/test_data_set_K/output_O.pb    TensorProto of the research output O
    DIR/polygraphy_inputs.json         the inputs as Polygraphy's ``--load-inputs`` reads them
    DIR/polygraphy_outputs.json        the research outputs as Polygraphy ``RunResults`` (``--load-outputs``)

This is the layout onnx's backend test runner and ONNX Runtime's ``onnx_test_runner``
read (inputs and outputs matched to the graph by position, and named). The Polygraphy
files follow its JSON encoding (arrays as base64 ``.npy``), written without Polygraphy.
Reading such a directory back as a reference set is :class:`paritybundle.check.sources.TestdataReferences`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle.external_data import bundle_graph, proto_text
from ..bundle.references import open_reference_groups
from ..bundle.store import VerifiedBundle, open_bundle
from ..bundle.writer import make_staging, publish
from ..check.sources import SET_PREFIX
from ..errors import BundleExistsError, BundleInvalid, UsageError

MODEL_NAME = "model.onnx"
POLYGRAPHY_INPUTS = "polygraphy_inputs.json"
POLYGRAPHY_OUTPUTS = "polygraphy_outputs.json"
# The runner name the research outputs carry in Polygraphy's RunResults.
RESEARCH_RUNNER = "paritybundle-research"


@dataclass(frozen=True)
class TestdataResult:
    path: Path
    sets: int
    samples: int


def write_testdata(
    bundle_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    set_size: int | None = None,
    force: bool = False,
    public_key: str | os.PathLike[str] | None = None,
) -> TestdataResult:
    """Write a verified bundle's reference set as ONNX test data (and Polygraphy JSON) in ``out``.

    Args:
        set_size: samples per ``test_data_set_K`` (None: all in one set per group of shapes).
        force: replace an existing ``out``.

    Raises:
        BundleInvalid: the bundle fails integrity.
        BundleExistsError: ``out`` exists and ``force`` is false.
        UsageError: a bad ``set_size``.
    """
    if set_size is not None and set_size < 1:
        raise UsageError("the set size must be at least 1 sample.")
    target = Path(out)
    if target.exists() and not force:
        raise BundleExistsError(f"{target} already exists; choose another directory or pass --force to replace it.")
    if target.exists() and (target.is_symlink() or not target.is_dir()):
        raise UsageError(
            f"{target} exists and is not a directory; --force replaces a directory written by "
            "`bundle testdata`, choose another path."
        )
    bundle = open_bundle(bundle_path, public_key)
    manifest = bundle.manifest
    # Staged beside the target and renamed into place: a failed run leaves nothing half-written.
    staging, lock = make_staging(target)
    try:
        order = _write_model(bundle, staging)
        groups = open_reference_groups(bundle)
        samples = sum(group.rows for group in groups)
        feeds, results, sets = [], [], 0
        # One set per batch, never mixing groups: a set is one tensor per input, of one shape.
        batches = (parts for group in groups for _, parts in group.batches(set_size or max(group.rows, 1)))
        for parts in batches:
            batch, expected = parts["inputs"], parts["outputs"]
            folder = staging / f"{SET_PREFIX}{sets}"
            folder.mkdir()
            for position, name in enumerate(order):
                _save_tensor(folder / f"input_{position}.pb", batch[name], name)
            for position, spec in enumerate(manifest.outputs):
                _save_tensor(folder / f"output_{position}.pb", expected[spec.name], spec.name)
            feeds.append({name: batch[name] for name in order})
            results.append({spec.name: expected[spec.name] for spec in manifest.outputs})
            sets += 1
        (staging / POLYGRAPHY_INPUTS).write_text(
            json.dumps([{n: _polygraphy_array(a) for n, a in f.items()} for f in feeds])
        )
        (staging / POLYGRAPHY_OUTPUTS).write_text(json.dumps(_polygraphy_run_results(results)))
        publish(staging, target, force=force)  # exchanged with an old one: never a moment without a target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return TestdataResult(path=target, sets=sets, samples=samples)


def _write_model(bundle: VerifiedBundle, folder: Path) -> list[str]:
    """The pipeline graph as ``model.onnx``, its outputs exactly the declared ones in the declared
    order (test runners match ``output_K.pb`` to graph outputs by position).

    Returns the graph's input names in order: ``input_K.pb`` follow it.
    """
    import onnx

    manifest = bundle.manifest
    # External data confined to the bundle's own listed files before the graph is read or copied.
    model, external = bundle_graph(bundle, manifest.stages.pipeline)
    initializers = {proto_text(i.name) for i in model.graph.initializer}
    order = [proto_text(i.name) for i in model.graph.input if proto_text(i.name) not in initializers]
    by_name = {proto_text(o.name): o for o in model.graph.output}
    declared_in, declared_out = [s.name for s in manifest.inputs], [s.name for s in manifest.outputs]
    if sorted(order) != sorted(declared_in) or not set(declared_out) <= set(by_name):
        raise BundleInvalid(
            f"{manifest.stages.pipeline} has inputs {order} and outputs {list(by_name)}, but the manifest "
            f"declares {declared_in} -> {declared_out}; re-export the bundle."
        )
    declared = [by_name[name] for name in declared_out]
    del model.graph.output[:]
    model.graph.output.extend(declared)
    onnx.save(model, str(folder / MODEL_NAME))
    for location, listed in external.items():  # checked: plain relative paths of listed files
        destination = folder / location
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.path(listed), destination)
    return order


def _save_tensor(path: Path, array: np.ndarray, name: str) -> None:
    from onnx import numpy_helper

    if array.dtype.kind in "US":
        array = array.astype(object)  # TensorProto strings
    path.write_bytes(numpy_helper.from_array(np.ascontiguousarray(array), name).SerializeToString())


def _polygraphy_array(array: np.ndarray) -> dict[str, str]:
    """Polygraphy's encoding of an ndarray: a base64 ``.npy`` (no pickle) and its class marker."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), "polygraphy_class": "ndarray"}


def _polygraphy_run_results(results: list[dict[str, np.ndarray]]) -> dict[str, object]:
    iterations = [
        {
            "outputs": {
                name: {"values": _polygraphy_array(a), "polygraphy_class": "LazyArray"} for name, a in outputs.items()
            },
            "runtime": None,
            "runner_name": RESEARCH_RUNNER,
            "polygraphy_class": "IterationResult",
        }
        for outputs in results
    ]
    return {"lst": [[RESEARCH_RUNNER, iterations]], "polygraphy_class": "RunResults"}
