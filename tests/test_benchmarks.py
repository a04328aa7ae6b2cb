"""The benchmarks run once at a tiny size, so they cannot rot (their numbers are not checked)."""
import json
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


@pytest.mark.parametrize("flag,value", [("--libraries", "minicnn-numba,torch"), ("--models", "lenet,resnet")])
def test_speed_benchmark_names_what_it_accepts(flag, value):
    result = subprocess.run([sys.executable, "benchmarks/speed.py", "--tiny", flag, value], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "expected some of" in result.stderr, result.stderr
    assert ("numpy,numba,numba1,torch" if flag == "--libraries" else "lenet,mnistcnn") in result.stderr


def test_step_profile_tiny(tmp_path):
    out = run("benchmarks/step_profile.py", "--models", "lenet", "--batches", "2", "--steps", "2",
              "--out", str(tmp_path / "p.json"))
    assert "lenet, batch 2" in out and "| conv2d_" in out and "(outside runs)" in out and "(step start) -> " in out
    profile = json.loads((tmp_path / "p.json").read_text())["profiles"][0]
    assert profile["runs"] > 0 and profile["rows"][0]["thread_ms"] > 0
    gaps = sum(gap["ms"] for gap in profile["gaps"])       # the gaps add up to the time outside runs
    assert abs(gaps - profile["outside_runs_ms"]) < 1e-6 * profile["recorded_step_ms"] + 1e-9


def test_step_profile_with_torch_tiny(tmp_path):
    """--torch times torch's step beside minicnn's and reports the ratio and the convolutions' ceiling,
    whose floor cannot be above the recorded step (the convolutions' tasks run inside it)."""
    out = run("benchmarks/step_profile.py", "--models", "lenet", "--batches", "4", "--steps", "2", "--torch",
              "--out", str(tmp_path / "p.json"))
    assert "torch's step" in out and "could be at most" in out
    profile = json.loads((tmp_path / "p.json").read_text())["profiles"][0]
    assert profile["torch_step_median_ms"] > 0 and profile["convolution_thread_ms"] > profile["deferred_thread_ms"]
    assert profile["convolution_thread_ms"] / json.loads((tmp_path / "p.json").read_text())["machine"]["threads"] \
        <= profile["recorded_step_ms"]
    result = subprocess.run([sys.executable, "benchmarks/step_profile.py", "--torch", "--inference"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "--torch" in result.stderr


def test_step_profile_inference_tiny(tmp_path):
    """--inference profiles forward passes in eval mode: the inference ops show, no backward op does."""
    out = run("benchmarks/step_profile.py", "--models", "resnet14", "--batches", "3", "--steps", "1", "--inference",
              "--out", str(tmp_path / "p.json"))
    assert "resnet14 inference, batch 3" in out and "conv2d_batchnorm_eval" in out and "backward" not in out
    profile = json.loads((tmp_path / "p.json").read_text())["profiles"][0]
    assert profile["mode"] == "inference" and profile["runs"] > 0


def test_ops_vs_torch_tiny(tmp_path):
    """Each op of the table runs against its torch twin (the same weights: the forwards agree) and
    lands in the JSON with both libraries' times and the ratios."""
    out = run("benchmarks/ops_vs_torch.py", "--batch", "2", "--repeats", "1", "--iters", "1",
              "--ops", "conv 3x3 32->64,batchnorm+relu 64,basic block 32", "--out", str(tmp_path / "o.json"))
    assert "conv 3x3 32->64 /2, 14x14" in out and "basic block 32 /2" in out and "16->16" not in out
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert [row["op"] for row in rows] == ["conv 3x3 32->64 /2, 14x14", "batchnorm+relu 64, 7x7", "basic block 32 /2, 28x28"]
    assert all(row["minicnn forward ms"] > 0 and row["torch forward ms"] > 0 and row["largest difference"] < 1e-3
               for row in rows)      # (backward = both - forward: at this size it can come out negative)


def test_ops_vs_torch_names_the_ops_when_none_matches():
    result = subprocess.run([sys.executable, "benchmarks/ops_vs_torch.py", "--ops", "conv 5x5"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "no op's name contains 'conv 5x5'" in result.stderr, result.stderr
    assert "conv 3x3 64->64, 7x7" in result.stderr


def test_gradcheck_benchmark_layers():
    out = run("benchmarks/gradcheck.py", "--layers-only", "--entries", "3")
    assert "| Conv2d" in out and "FAIL" not in out


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.environ.get("MINICNN_DATA", "/nonexistent"), "mnist")),
                    reason="MINICNN_DATA does not point at the MNIST files")
def test_torch_recipe_benchmark_tiny():
    out = run("benchmarks/lenet_recipe_torch.py", "--epochs", "1", "--limit", "640", "--minicnn")
    assert "torch" in out and "minicnn" in out and "test accuracy" in out


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.environ.get("MINICNN_DATA", "/nonexistent"), "fashion-mnist")),
                    reason="MINICNN_DATA does not point at the Fashion-MNIST files")
def test_recipe_benchmark_tiny(tmp_path):
    out = run("benchmarks/recipe.py", "--model", "mobilenetmnist", "--dataset", "fashion-mnist", "--epochs", "2",
              "--torch-epochs", "1", "--limit", "256", "--out", str(tmp_path / "r.json"))
    assert "minicnn  training" in out and "torch    training" in out and "measured over 1 epochs" in out
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert runs["minicnn"]["epochs_run"] == 2 and runs["torch"]["epochs_run"] == 1
    run("benchmarks/recipe.py", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "3", "--libraries",
        "minicnn", "--minicnn-epochs", "1", "--limit", "128", "--out", str(tmp_path / "m.json"))
    assert json.loads((tmp_path / "m.json").read_text())["runs"]["minicnn"]["epochs_run"] == 1


def test_onnx_speed_benchmark_tiny():
    pytest.importorskip("onnxruntime")
    out = run("benchmarks/onnx_speed.py", "--models", "lenet", "--batches", "1,8", "--repeats", "1", "--seconds", "0.05")
    assert "| lenet | 1 |" in out and "| lenet | 8 |" in out


def test_layer_profile_tiny():
    out = run("benchmarks/layer_profile.py", "--models", "lenet", "--batches", "2", "--repeats", "1")
    assert "| 0 ConvReLUPool |" in out and "| 3 Linear |" in out and "optimizer step" in out


def test_memory_benchmark_tiny():
    out = run("benchmarks/memory.py", "--tiny")
    assert "AnimalNet batch 1 minicnn: peak" in out and "torch: peak" in out and "cache warm" in out


def test_speed_results_never_overwrite_a_run_of_the_same_day(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import speed
    finally:
        sys.path.pop(0)
    first = speed.results_stem(str(tmp_path), "cpu-2026-01-01")
    assert first == str(tmp_path / "cpu-2026-01-01")
    (tmp_path / "cpu-2026-01-01.json").write_text("{}")
    assert speed.results_stem(str(tmp_path), "cpu-2026-01-01") == str(tmp_path / "cpu-2026-01-01b")
    (tmp_path / "cpu-2026-01-01b.json").write_text("{}")
    assert speed.results_stem(str(tmp_path), "cpu-2026-01-01") == str(tmp_path / "cpu-2026-01-01c")
    named = tmp_path / "busy" / "load1.json"                 # a file named: that file, not a folder of that name
    assert speed.results_stem(str(named), "cpu-2026-01-01") == str(tmp_path / "busy" / "load1")
    assert (tmp_path / "busy").is_dir() and not named.exists()


def test_speed_ratio_is_the_median_of_back_to_back_pairs():
    """Each repeat's minicnn/torch ratio, then their median and range (not a ratio of medians
    taken at different moments of a drifting machine)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import speed
    finally:
        sys.path.pop(0)
    ratios = speed.paired_ratios({"numba": [2.0, 6.0, 3.0], "torch": [1.0, 2.0, 3.0]})
    assert ratios == {"numba": {"median": 2.0, "low": 1.0, "high": 3.0}}       # medians' ratio: 1.5
    row = {"ratio_to_torch": ratios}
    assert speed.ratio_text(row, "numba") == " (2.00x; 1.00-3.00)" and speed.ratio_text(row, "torch") == ""


def test_distributed_benchmark_tiny():
    pytest.importorskip("mpi4py")
    out = run("benchmarks/distributed.py", "--tiny")
    assert "| lenet | 64 |" in out and "all-reduce between 2 ranks here" in out
