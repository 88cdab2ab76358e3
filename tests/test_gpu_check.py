"""`make gpu-check` on a machine without CUDA: one clear line and a non-zero exit, nothing run. Its wheel
list names what a torch-and-transformers-only GPU machine lacks."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_fails_with_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "gpu-check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine"]
    assert done.stdout == ""


def test_requirements_pin_what_torch_and_transformers_do_not_bring():
    done = subprocess.run([sys.executable, str(SCRIPT), "--requirements"], capture_output=True, text=True, timeout=120)
    names = {line.split("==")[0] for line in done.stdout.split()}
    assert done.returncode == 0 and {"trl", "accelerate", "datasets", "sacrebleu", "scipy"} <= names
    assert not names & {"torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy"}
