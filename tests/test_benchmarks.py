"""The benchmarks run once at a tiny size, so they cannot rot (their numbers are not checked)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_speed_benchmark_tiny():
    out = run("benchmarks/speed.py", "--tiny", "--models", "lenet")
    assert "| lenet | train | 64 |" in out and "torch" in out


def test_gradcheck_benchmark_layers():
    out = run("benchmarks/gradcheck.py", "--layers-only", "--entries", "3")
    assert "| Conv2d" in out and "FAIL" not in out


@pytest.mark.parametrize("script", ["train_lenet_mnist.py"])
def test_example_scripts_compile(script):
    with open(os.path.join(ROOT, "examples", script)) as f:
        compile(f.read(), script, "exec")
