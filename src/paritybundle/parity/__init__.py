"""The maths of a verdict, numpy only: tolerance policies, comparison accumulators, decisions,
and where a failing check diverged (stage and column localisation).

Nothing here logs, reads configuration or runs a model: it sees arrays and a tolerance and
returns result objects that are truthy when parity holds.
"""
