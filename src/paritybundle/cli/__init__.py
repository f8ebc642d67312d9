"""The ``bundle`` command line: a shell over the library (:mod:`.app`), its commands grouped in
:mod:`.checking` (check, serve), :mod:`.inspection` (verify, inspect, env, diff) and
:mod:`.artifacts` (export, testdata, pack, sign, rehearse, build-image)."""

from . import artifacts, checking, inspection  # noqa: F401  (each module registers its commands on the app)
from .app import app, main

__all__ = ["app", "main"]
