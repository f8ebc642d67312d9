"""Export the test suite's example bundles once, for runs that repeat the tests many times (`make mutation`).

    python scripts/fixture_bundles.py DIR      # then PARITYBUNDLE_TEST_BUNDLES=DIR pytest ...

Each bundle is made exactly as tests/conftest.py makes it (same specs, same epochs).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import _load_example  # noqa: E402

from paritybundle.training import export_spec  # noqa: E402


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    specs = {
        "digits": lambda: _load_example("digits").make_spec(epochs=2),
        "wine": lambda: _load_example("wine").make_spec(),
        "digit-images": lambda: _load_example("digit_images").make_spec(epochs=3),
    }
    for name, make in specs.items():
        if not (target / name / "bundle.json").exists():
            export_spec(make(), target / name, force=True)
        print(f"{target / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
