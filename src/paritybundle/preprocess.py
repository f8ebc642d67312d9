"""``paritybundle.preprocess``: the public name of the preprocessing steps users fit in research.

The implementation is training-side code (:mod:`paritybundle.training.preprocessing`: fitting and
freezing into ONNX happen at export); importing it never loads torch.
"""

from .training.preprocessing import *  # noqa: F403
from .training.preprocessing import __all__  # noqa: F401
