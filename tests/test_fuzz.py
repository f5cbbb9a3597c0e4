"""The fuzz targets of tests/fuzz_targets.py, each in its own subprocess under an address-space cap of
256 MiB above its post-setup baseline (RLIMIT_AS), with fixed (derandomized) hypothesis seeds, so CI runs
the same ~12,000 inputs every time (~2 minutes in all on a shared 2-core machine).

A longer run: ALTCLIP_FUZZ_EXAMPLES=100000 python -m pytest tests/test_fuzz.py  (or fuzz_targets.py itself,
with --seed for new inputs). Each test prints the target's report: inputs run, how many ended in the
documented error, RSS growth over the run, the largest peak-RSS rise of one input.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz_targets import DEFAULT_EXAMPLES, TARGETS

FUZZ = Path(__file__).with_name("fuzz_targets.py")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target(name, record_property):
    examples = int(os.environ.get("ALTCLIP_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES[name])
    proc = subprocess.run([sys.executable, str(FUZZ), name, "--examples", str(examples)], capture_output=True,
                          text=True, timeout=max(600, examples // 10), env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{name}: exit status {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    record_property("fuzz", report)
    assert report["target"] == name and report["inputs"] >= examples * 0.9  # hypothesis skips a few duplicates
    assert report["largest_input_peak_rss_mib"] < 256
