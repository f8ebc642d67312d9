"""SIGKILL at random moments of an export, and two exports racing for one target."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_tools import HOSTILE_COUNTS
from paritybundle.bundle.store import open_bundle
from paritybundle.errors import ParityBundleError

CHILD = Path(__file__).with_name("crash_child.py")
KILL_POINTS = int(os.environ.get("PARITYBUNDLE_KILL_POINTS", "30"))


def _child(work: Path, target: Path, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, str(CHILD), str(work), str(target), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().strip() == "READY", process.stderr.read()
    return process


def _state(target: Path) -> str:
    if not target.exists():
        return "absent"
    try:
        open_bundle(target)
        return "complete"
    except ParityBundleError:
        return "partial"


@pytest.mark.parametrize("force", [False, True], ids=["fresh target", "replacing a bundle"])
def test_sigkill_never_leaves_a_partial_bundle(tmp_path, force):
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "out" / "linear"
    # One full run, to know how long an export takes (and, with force, a bundle to replace).
    full = _child(work, target)
    out, err = full.communicate("go\n", timeout=300)
    assert full.returncode == 0, err
    duration = float(out.split()[-1])
    rng = random.Random(1234 + force)
    outcomes = {"absent": 0, "complete": 0, "partial": 0}
    mid_write = 0
    for _ in range(KILL_POINTS):
        for leftover in target.parent.glob(f".{target.name}.*"):
            shutil.rmtree(leftover)
        if not force:
            shutil.rmtree(target, ignore_errors=True)
        process = _child(work, target, *(["--force"] if force else []))
        process.stdin.write("go\n")
        process.stdin.flush()
        try:
            # Up to 1.5x the measured duration, so kills land before, during and after the commit.
            process.wait(timeout=rng.uniform(0, duration * 1.5))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        outcomes[_state(target)] += 1
        # A staging directory left behind: the kill landed while the bundle was being written.
        mid_write += any(target.parent.glob(f".{target.name}.partial-*"))
        if force and not target.exists():
            # Killed between moving the old bundle aside and moving the new one in: restore one.
            full = _child(work, target)
            full.communicate("go\n", timeout=300)
    key = f"sigkill kill points ({'replacing' if force else 'fresh'})"
    HOSTILE_COUNTS[key] = (
        f"{KILL_POINTS} tried: {outcomes['complete']} complete, {outcomes['absent']} absent, "
        f"{outcomes['partial']} partial; {mid_write} landed mid-write"
    )
    assert outcomes["partial"] == 0, outcomes
    if force:  # the old bundle and the new are exchanged in one step: the target is never missing
        assert outcomes["absent"] == 0, outcomes
    # The test means something only if kills landed while the bundle was being written.
    assert mid_write > 0, outcomes


def test_concurrent_exports_to_one_target_one_wins_the_other_fails_cleanly(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "linear"
    racers = [_child(work, target) for _ in range(2)]
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    results = [racer.communicate(timeout=300) for racer in racers]
    codes = sorted(racer.returncode for racer in racers)
    assert codes == [0, 2], results
    loser_err = next(err for racer, (_, err) in zip(racers, results, strict=True) if racer.returncode == 2)
    assert "already exists" in loser_err or "another export" in loser_err, loser_err
    assert "Traceback" not in loser_err
    assert open_bundle(target)
