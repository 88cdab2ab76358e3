"""`make gpu-check`: what a CPU machine cannot check, on one CUDA GPU in a few minutes; prints a markdown
table to paste into BENCHMARKS.md.

- GRPO of each role, one step at lr 1e-6 from a bf16 copy of the tiny base, with bf16 autocast and float32
  master weights: the saved weights must change and be float32 (the Questioner in this process, the
  Reasoner through the subprocess launcher);
- the subprocess launcher gives the GPU back: device memory in use before, during and after its stage;
- batched generation (confidence scoring, as ``benchmarks/run.py`` measures it) on the GPU, against the
  CPU figure in BENCHMARKS.md;
- peak GPU memory of this process.

    python benchmarks/gpu_check.py                  # the check (exit 1 on a failed row or without CUDA)
    python benchmarks/gpu_check.py --requirements   # pinned wheels it needs beyond torch and transformers

Without CUDA it exits 1 with one line. It needs torch and transformers; the GRPO rows also need TRL and
the rest of what ``visplay_core.grpo`` imports. A GPU machine may have only torch and transformers:
``make gpu-wheels`` (on a machine with the package index) downloads those wheels into ``GPU_WHEELS`` and
``make gpu-check`` installs them from there first; what still cannot run says what is missing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # after benchmarks/ itself: `run` is benchmarks/run.py
BASE = ROOT / "checkpoints" / "tiny-base"
# Distributions the GRPO rows need beyond torch and transformers, with the module each one provides.
GRPO_NEEDS = {"trl": "trl", "accelerate": "accelerate", "datasets": "datasets", "pydantic": "pydantic",
              "pyyaml": "yaml", "pillow": "PIL", "sacrebleu": "sacrebleu", "scipy": "scipy"}
MIB = 1 << 20


def requirements() -> list[str]:
    """``name==version`` of every distribution the GRPO rows need that torch and transformers do not bring
    themselves, as installed here (run it in the project's environment)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def closure(names) -> dict[str, str]:
        found, todo = {}, list(names)
        while todo:
            name = canonicalize_name(todo.pop())
            if name in found:
                continue
            try:
                dist = distribution(name)
            except PackageNotFoundError:
                continue
            found[name] = dist.version
            for line in dist.requires or []:
                req = Requirement(line)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(req.name)
        return found

    there = closure(["torch", "transformers"])
    return [f"{name}=={version}" for name, version in sorted(closure(GRPO_NEEDS).items()) if name not in there]


def require_cuda():
    try:
        import torch
    except ImportError:
        sys.exit("gpu-check: torch is not installed")
    if not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine")
    return torch


def _changed(before: Path, after: Path) -> tuple[float, set[str]]:
    """Share of the weights that differ, and the saved dtypes."""
    from safetensors.torch import load_file

    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    changed = sum(int((old[k].float() != new[k].float()).sum()) for k in old)
    return changed / sum(t.numel() for t in old.values()), {str(t.dtype).removeprefix("torch.") for t in new.values()}


class DeviceMemory:
    """Device memory in use (all processes, as ``nvidia-smi`` counts it), polled while a block runs."""

    def __init__(self, torch):
        self.torch, self.peak, self._stop = torch, 0.0, threading.Event()

    def used(self) -> float:
        free, total = self.torch.cuda.mem_get_info()
        return (total - free) / MIB

    def __enter__(self):
        self.before = self.used()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.used())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = self.used()


def grpo_rows(torch, work: Path) -> list[list[str]]:
    names = ("GRPO step, Questioner, in this process", "GRPO step, Reasoner, subprocess launcher")
    missing = [dist for dist, module in GRPO_NEEDS.items() if importlib.util.find_spec(module) is None]
    if missing:
        why = f"missing {', '.join(missing)} (make gpu-wheels, then make gpu-check)"
        return [[name, "not run", why] for name in names]
    from visplay_core.config import TrainingConfig
    from visplay_core.corpus import ingest, write_embedded_corpus
    from visplay_core.grpo import GRPOJob, ScorerSpec, launch
    from visplay_core.method import MethodConfig
    from visplay_core.model import load_model, load_processor, save_checkpoint

    bf16 = work / "bf16"
    save_checkpoint(load_model(BASE, dtype=torch.bfloat16, device="cpu"), load_processor(BASE), bf16)
    world = write_embedded_corpus(work / "world", 4, seed=0)
    ids = [m["id"] for m in ingest(world / "images", work / "corpus", max_pixels=112 * 112).images]
    common = dict(model=str(bf16), images_folder=str(work / "corpus"), steps=1, learning_rate=1e-6,
                  prompts_per_step=len(ids), num_generations=4, temperature=1.5, max_new_tokens=48, save_steps=1,
                  kl_beta=0.0, seed=0, method=MethodConfig())
    questioner = GRPOJob(role="questioner", output=str(work / "questioner"), work_dir=str(work / "questioner-work"),
                         rows=[{"image_id": i} for i in ids], **common,
                         scorer=ScorerSpec(reasoner=str(BASE), m=6, temperature=1.0, max_new_tokens=48, seed=0))
    reasoner = GRPOJob(role="reasoner", output=str(work / "reasoner"), work_dir=str(work / "reasoner-work"),
                       rows=[{"image_id": i, "question": "How many circles are there?", "pseudo_label": "1"}
                             for i in ids], training=TrainingConfig(launcher="subprocess"), **common)
    rows = []
    start = time.time()
    steps = launch(questioner).steps
    share, dtypes = _changed(bf16, work / "questioner" / "model")
    ok = steps == 1 and share > 0.5 and dtypes == {"float32"}
    rows.append([names[0], "pass" if ok else "FAIL",
                 f"{steps} step, {100 * share:.1f}% of the weights of a bf16 checkpoint changed at lr 1e-6, saved "
                 f"{'/'.join(sorted(dtypes))}; {time.time() - start:.1f} s"])
    gc.collect()
    torch.cuda.empty_cache()
    start = time.time()
    with DeviceMemory(torch) as memory:
        steps = launch(reasoner).steps
    share, dtypes = _changed(bf16, work / "reasoner" / "model")
    used_gpu, freed = memory.peak > memory.before + 16, memory.after < memory.before + 16
    ok = steps == 1 and share > 0.5 and dtypes == {"float32"} and used_gpu and freed
    rows.append([names[1], "pass" if ok else "FAIL",
                 f"{steps} step, {100 * share:.1f}% of the weights changed, saved {'/'.join(sorted(dtypes))}; GPU "
                 f"memory in use {memory.before:.0f} MiB before, up to {memory.peak:.0f} during, {memory.after:.0f} "
                 f"after the stage's process ended; {time.time() - start:.1f} s"])
    return rows


def cpu_tokens_per_s() -> float | None:
    """The batched scoring figure of the CPU run recorded in BENCHMARKS.md."""
    found = re.search(r"\| batched, shared prefill \|[^|]*\|[^|]*\| *(\d+) *\|", (ROOT / "BENCHMARKS.md").read_text())
    return float(found.group(1)) if found else None


def generation_row(torch) -> list[str]:
    from run import scoring_speed

    from visplay_core.model import load_model, load_processor

    model, processor = load_model(BASE), load_processor(BASE)  # on this process's GPU
    if model.device.type != "cuda":
        return ["batched generation (confidence scoring, 16 questions × m 10)", "FAIL",
                f"load_model placed the model on {model.device}, not the GPU"]
    speed = scoring_speed(model, processor)
    cpu = cpu_tokens_per_s()
    against = f"{speed['batched'] / cpu:.1f}× the CPU figure ({cpu:.0f} tokens/s)" if cpu else "no CPU figure found"
    return ["batched generation (confidence scoring, 16 questions × m 10)", "measured",
            f"{speed['batched']:.0f} generated tokens/s on the GPU, {against}; "
            f"{speed['batched'] / speed['looped']:.1f}× its per-sample loop ({speed['looped']:.0f} tokens/s)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", action="store_true", help="print the pinned wheels the GRPO rows need")
    if parser.parse_args().requirements:
        print("\n".join(requirements()))
        return 0
    torch = require_cuda()
    import transformers

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="visplay-gpu-check-") as tmp:
        rows = grpo_rows(torch, Path(tmp)) + [generation_row(torch)]
    rows.append(["peak GPU memory of this process", "measured",
                 f"{torch.cuda.max_memory_allocated() / MIB:.0f} MiB allocated by torch "
                 "(Questioner GRPO with its scorer, generation)"])
    header = (f"### GPU check\n\n{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
              f"transformers {transformers.__version__}, {time.strftime('%Y-%m-%d')}; {time.time() - start:.0f} s in all.")
    print(header + "\n\n| check | result | detail |\n|---|---|---|\n" + "\n".join(f"| {' | '.join(r)} |" for r in rows))
    failed = sum(r[1] == "FAIL" for r in rows)
    print(f"\ngpu-check: {failed} failed, {sum(r[1] == 'not run' for r in rows)} not run", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
