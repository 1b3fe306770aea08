"""The speed benchmarks run and print the tables the README quotes (smallest settings)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_speed_prints_one_row_per_setting_with_its_flops():
    out = run_script("benchmarks/plan_speed.py", "--presets", "tiny", "--set", "embed_dim=16", "--repeats", "1",
                     "--precision", "fp32", "bf16", "--cpu-only", "--threads", "1")
    assert re.search(r"cpu matmul GFLOP/s .*: fp32 [\d,]+, bf16 [\d,]+", out)
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| tiny")]
    assert [(r[0].strip(), r[3].strip(), r[4].strip()) for r in rows] == [
        ("tiny embed_dim=16", "fp32", "eager"), ("tiny embed_dim=16", "bf16", "eager")
    ]
    for row in rows:
        seconds, gflop = float(row[5]), float(row[9].replace(",", ""))
        assert 0 < seconds < 60 and 5 < gflop < 20  # 11.4 GFLOP: 30 rollouts of 300 candidates
