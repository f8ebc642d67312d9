"""The ``bundle`` command line: a shell over the library (:mod:`.app`), its commands grouped in
:mod:`.checking` (check, replay, drift), :mod:`.serving` (serve), :mod:`.inspection` (verify, inspect, env,
diff), :mod:`.artifacts` (export, testdata, pack, sign, rehearse, build-image, pull) and :mod:`.scoring` (score)."""

from . import artifacts, checking, inspection, scoring, serving  # noqa: F401  (each module registers its commands on the app)
from .app import app, main

__all__ = ["app", "main"]
