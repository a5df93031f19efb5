"""tficon.core.threads: the CPU threading default of the CLI, and explicit counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tficon.core import threads

ROOT = Path(__file__).resolve().parents[1]


def test_free_cores_subtracts_the_load_and_keeps_at_least_one():
    usable = threads.usable_cores()
    assert threads.free_cores(load=0.0) == usable
    assert threads.free_cores(load=usable + 5.0) == 1
    assert threads.free_cores(load=float("nan")) == usable
    if usable >= 2:
        assert threads.free_cores(load=1.3) == usable - 1  # 0.7 of a core is worth a thread


def test_explicit_thread_counts_win_and_bad_ones_name_the_setting(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(threads.THREADS_ENV, "3")
        assert threads.apply_threads(1) == threads.ThreadSettings(1, "argument", os.environ.get("OMP_WAIT_POLICY"))
        assert torch.get_num_threads() == 1
        settings = threads.apply_threads()
        assert (settings.threads, settings.source) == (3, threads.THREADS_ENV) == (torch.get_num_threads(), "TFICON_THREADS")
        monkeypatch.setenv(threads.THREADS_ENV, "many")
        with pytest.raises(ValueError, match="TFICON_THREADS must be a positive integer .*'many'"):
            threads.apply_threads()
        monkeypatch.delenv(threads.THREADS_ENV)
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="threads must be a positive integer"):
                threads.apply_threads(bad)
    finally:
        torch.set_num_threads(before)


def _fresh(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (OpenMP settings are fixed at torch's import) and read its JSON."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TFICON_THREADS")}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=environment, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_default_sets_a_passive_wait_policy_before_torch_and_caps_threads_to_the_free_cores():
    code = (
        "import json, os, sys\n"
        "from tficon import threads\n"
        "set_now = threads.prepare_environment()\n"
        "import torch\n"
        "full = torch.get_num_threads()\n"
        "free = threads.free_cores()\n"
        "s = threads.apply_threads()\n"
        "late = threads.prepare_environment()\n"
        "print(json.dumps([set_now, late, os.environ.get('OMP_WAIT_POLICY'), full, free, s.threads, s.source]))\n"
    )
    set_now, late, policy, full, free, used, source = _fresh(code)
    assert set_now is True and late is False and policy == "PASSIVE"
    assert used == min(full, free) and source in ("free cores", "torch default")
    # the user's own choices are left alone
    set_now, _, policy, full, _, used, source = _fresh(code, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert (set_now, policy, used, source) == (False, "ACTIVE", 1, "OMP_NUM_THREADS")


def test_cli_threads_option(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "tficon.cli", "demo", "--threads", "0", "--out", str(tmp_path / "out.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "threads must be a positive integer" in bad.stderr, bad.stderr[-2000:]
    assert not (tmp_path / "out.png").exists()  # refused before any model was loaded
    assert "--threads" in subprocess.run(
        [sys.executable, "-m", "tficon.cli", "compose", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
