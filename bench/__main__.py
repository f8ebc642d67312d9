"""Run every benchmark (or those named): ``python -m bench [check_vs_ort] [hashing]``."""

from __future__ import annotations

import platform
import sys

from . import (
    binary,
    capture,
    check_vs_ort,
    hashing,
    scale,
    score,
    serving,
    startup,
    tail,
    text,
    timeline,
    tolerance,
    verdict,
)

BENCHMARKS = {
    "check_vs_ort": check_vs_ort.main,
    "hashing": hashing.main,
    "startup": startup.main,
    "serving": serving.main,
    "scale": scale.main,
    "verdict": verdict.main,
    "binary": binary.main,
    "capture": capture.main,
    "score": score.main,
    "tolerance": tolerance.main,
    "text": text.main,
    "tail": tail.main,
    "timeline": timeline.main,
}


def main(names: list[str]) -> None:
    import os

    import onnxruntime

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    for name in names or list(BENCHMARKS):
        if name not in BENCHMARKS:
            sys.exit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        BENCHMARKS[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
