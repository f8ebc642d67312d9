"""The check engine: a *source* of reference rows x a *target* that produces outputs -> one
comparison loop (:mod:`.engine`) -> result models (:mod:`.results`).

``paritybundle.check`` (the attribute) is the :func:`.checks.check` function; this package is
reached through import statements (``from paritybundle.check.engine import run``).
"""
