"""The ``bundle`` command line: a shell over the library (:mod:`.app`), its commands grouped in
:mod:`.checking` (check, serve), :mod:`.inspection` (verify, inspect, env, diff) and
:mod:`.artifacts` (export, testdata, pack, sign, rehearse, build-image) and
:mod:`.scoring` (score)."""

from . import artifacts, checking, inspection, scoring  # noqa: F401  (each module registers its commands on the app)
from .app import app, main

__all__ = ["app", "main"]
