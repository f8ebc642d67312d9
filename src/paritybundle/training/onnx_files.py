"""An ``.onnx`` model made elsewhere, staged into a bundle with the weights it keeps in side files."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..bundle.external_data import external_locations, mentions_external_data
from ..errors import BundleInvalid, SpecError
from .inputs import first_paragraph

# Folded graphs at least this large keep their weights in a side file (protobuf cannot hold 2 GB).
EXTERNAL_DATA_ABOVE_BYTES = 512 * 1024**2


def copy_onnx_with_data(source: Path, target: Path, external_data: bool | None) -> None:
    """An ``.onnx`` made elsewhere staged as ``model.onnx`` with the weights it keeps in side files
    (torch's dynamo exporter writes ``NAME.onnx.data``), as ``external_data`` says: true keeps them in
    ``model.onnx.data``, false folds them into ``model.onnx``, None keeps them outside from 512 MiB.

    Raises:
        SpecError: a side file the graph names is missing or lies outside the model's folder.
    """
    import onnx

    external = mentions_external_data(source)
    if not external and not external_data:
        shutil.copyfile(source, target)
        return
    locations: list[str] = []
    if external:
        try:
            locations = external_locations(source)
        except BundleInvalid:
            raise SpecError(f"{source} is not a readable ONNX model; check the path.") from None
    base = source.resolve().parent
    for location in sorted(set(locations)):
        where = (base / location).resolve()
        if not location or not where.is_relative_to(base) or not where.is_file():
            raise SpecError(
                f"{source.name} keeps weights in {location!r}, which is missing or outside its folder "
                f"{base}; put the data file beside the model."
            )
    data_bytes = sum((base / location).stat().st_size for location in set(locations))
    keep_outside = external_data if external_data is not None else data_bytes >= EXTERNAL_DATA_ABOVE_BYTES
    try:
        model = onnx.load(str(source), load_external_data=True)
        if keep_outside:
            # Asked for (external_data=True): every weight goes out, however small the model.
            onnx.save(
                model,
                str(target),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=f"{target.name}.data",
                size_threshold=0 if external_data else 1024,
            )
        else:
            onnx.save(model, str(target))
    except Exception as exc:
        raise SpecError(
            f"{source.name} and its external data cannot be staged ({type(exc).__name__}: "
            f"{first_paragraph(exc)}); a graph over 2 GB needs external_data=True."
        ) from None
