"""ONNX external data: weights kept in side files must be files of the bundle itself.

A model over 2 GB keeps its weights in files named by each tensor's ``location``. A
hostile model could name ``../../etc/shadow`` or an absolute path and have ONNX
Runtime read it. Before any ONNX library opens the model, every ``location`` must be
a plain relative path, in the model's directory or below, listed in the manifest.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import BundleInvalid

_MARKER = b"location"  # the key every external-data entry carries, stored verbatim in the protobuf
_CHUNK = 4 * 1024 * 1024


def mentions_external_data(path: Path) -> bool:
    """Cheap pre-scan: no ``location`` key anywhere means no external data (no protobuf parse)."""
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            if _MARKER in tail + chunk[: len(_MARKER)] or _MARKER in chunk:
                return True
            tail = chunk[-len(_MARKER) :]
    return False


def load_graph(path: Path, label: str):
    """A bundle's ONNX graph without its external weights; unreadable is the bundle's fault (exit 3).

    ``label`` names the graph in the message (e.g. ``pipeline.onnx``).
    """
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors alike
        raise BundleInvalid(
            f"{label} is not a readable ONNX model ({type(exc).__name__}); re-export the bundle."
        ) from None


def proto_text(value: str | bytes) -> str:
    """A protobuf string field as text. protobuf hands back ``bytes`` when a string field is not
    valid UTF-8 (a corrupted or hostile graph); such a name matches nothing and is shown escaped."""
    return value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")


def external_locations(path: Path) -> list[str]:
    """Every external-data ``location`` in the model (graph, subgraphs, functions), unresolved."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = load_graph(path, path.name)
    locations = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {proto_text(entry.key): proto_text(entry.value) for entry in tensor.external_data}
            locations.append(entries.get("location", ""))
    return locations


def bundle_graph(bundle, file: str):
    """One of a verified bundle's graphs without its weights, and the bundle files holding them.

    Every command that loads or copies a graph goes through here: the external data is
    confined to files the manifest lists (:func:`check_external_data`) before anything else.

    Returns:
        ``(model, files)``: the ``ModelProto``, and for each external-data ``location`` (relative
        to the graph) the listed path of that file in the bundle.

    Raises:
        BundleInvalid: external data outside the bundle or unlisted, or an unreadable graph.
    """
    listed = set(bundle.manifest.files)
    check_external_data(file, bundle.root, listed)
    path = bundle.path(file)
    base = PurePosixPath(file).parent
    locations = set(external_locations(path)) if mentions_external_data(path) else set()
    return load_graph(path, file), {location: _within(base, location) for location in sorted(locations)}


def _within(base: PurePosixPath, location: str) -> str:
    return str(PurePosixPath(*[p for p in (base / PurePosixPath(location)).parts if p != "."]))


def check_external_data(model_file: str, root: Path, listed: set[str]) -> None:
    """Refuse a model whose external data is not a listed file inside the bundle.

    Args:
        model_file: the model's path relative to the bundle root (e.g. ``pipeline.onnx``).
        root: the bundle directory.
        listed: the relative paths the manifest lists.
    """
    path = root / model_file
    if not mentions_external_data(path):
        return
    base = PurePosixPath(model_file).parent
    for location in external_locations(path):
        pure = PurePosixPath(location)
        if not location or location.startswith("/") or "\\" in location or pure.is_absolute() or ".." in pure.parts:
            raise BundleInvalid(
                f"{model_file} keeps weights at {location!r}, outside the bundle; "
                "external data must be files inside it. The bundle is refused."
            )
        relative = _within(base, location)
        if relative not in listed:
            raise BundleInvalid(
                f"{model_file} keeps weights in {location!r}, which the manifest does not list; the bundle is refused."
            )
