"""benchmarks/gpu_check.sh: skips cleanly without a GPU; its Python checks run on CPU."""

import os
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def test_skip_mode_is_one_line_and_exit_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == ["gpu_check: skipped (no CUDA GPU visible to torch)"]


def test_checks_run_on_cpu_tiny(capsys):
    assert gpu_check.main(["step", "--device", "cpu", "--tiny"]) == 0
    assert gpu_check.main(["volume", "--device", "cpu", "--tiny"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")]
    steps = [r for r in rows if r.startswith("| train step")]
    assert len(steps) == 6 and not any("FAILED" in r for r in steps)
    volume = [r for r in rows if r.startswith("| volume inference")]
    assert len(volume) == 3 and all("labels equal 100.000 %" in r for r in volume)


def test_cuda_requested_without_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["step"]) == 2
