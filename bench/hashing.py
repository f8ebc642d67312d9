"""Bundle hashing on a 1 GB file: memory stays flat, throughput vs `sha256sum`.

The hashing runs in a child process so its peak RSS is its own; the baseline is
the same child's RSS before hashing. `sha256sum` (coreutils) is the throughput
baseline on the same file, interleaved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import interleaved, median, print_table

SIZE = 1024**3

_CHILD = """
import resource, sys
from pathlib import Path
from paritybundle.bundle.store import sha256_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sha256_file(Path(sys.argv[1]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


def _make_file(path: Path) -> None:
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as handle:
        for _ in range(SIZE // len(block)):
            handle.write(block)


def main(repeats: int = 3) -> list[tuple[str, str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.bin"
        _make_file(path)
        result = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True)
        before_kib, after_kib = map(int, result.stdout.split())
        rows = [
            (
                "peak RSS growth hashing 1 GiB",
                f"{(after_kib - before_kib) / 1024:.1f} MiB",
                f"{SIZE / 1024**2:.0f} MiB (file size)",
                f"{(after_kib - before_kib) * 1024 / SIZE:.4f}x (flat)",
            )
        ]
        if shutil.which("sha256sum"):
            from paritybundle.bundle.store import sha256_file

            times = interleaved(
                {
                    "ours": lambda: sha256_file(path),
                    "sha256sum": lambda: subprocess.run(["sha256sum", str(path)], capture_output=True, check=True),
                },
                repeats,
            )
            ours, theirs = median(times["ours"]), median(times["sha256sum"])
            rows.append(
                (
                    f"throughput, 1 GiB (median of {repeats})",
                    f"{SIZE / ours / 1e6:.0f} MB/s",
                    f"{SIZE / theirs / 1e6:.0f} MB/s (sha256sum)",
                    f"{theirs / ours:.2f}x (>= 0.8x)",
                )
            )
    print_table("bundle hashing", rows)
    return rows


if __name__ == "__main__":
    main()
