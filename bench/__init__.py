"""Benchmarks: each prints ratios against a baseline measured side by side in the same run.

Run them all with ``python -m bench`` (or ``make bench``); one with ``python -m bench NAME``.
Machines here are shared and noisy, so only ratios of interleaved runs mean anything.
"""
