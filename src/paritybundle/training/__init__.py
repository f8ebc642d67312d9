"""The training side: the only package that imports torch (lazily, inside functions).

``export`` turns a trained ``torch.nn.Module`` and raw reference inputs into a
bundle; ``ExportSpec``/``load_spec`` describe the same thing for ``bundle export SPEC``.
"""

from .export import ExportResult, export, export_spec
from .from_traffic import with_references_from
from .replay import replay
from .spec import ExportSpec, load_spec

__all__ = ["ExportResult", "ExportSpec", "export", "export_spec", "load_spec", "replay", "with_references_from"]
