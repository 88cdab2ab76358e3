"""The one configuration object of a self-evolution run: typed, validated, loaded from YAML presets or
files, overridable with ``key=value`` pairs (dotted keys reach nested sections)."""

from __future__ import annotations

import functools
import hashlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .method import MethodConfig, method_preset

PRESETS_DIR = Path(__file__).parent / "presets"
BASE_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "tiny-base"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the reason."""


class RoleConfig(BaseModel):
    """GRPO and sampling settings of one role (Questioner or Reasoner)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(20, ge=0, description="GRPO steps per iteration")
    learning_rate: float = Field(1e-6, gt=0)
    prompts_per_step: int = Field(2, ge=1, description="images (Questioner) or questions (Reasoner) per GRPO step")
    num_generations: int = Field(8, ge=2, description="GRPO group size: completions per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of rollouts")
    max_new_tokens: int = Field(48, ge=1)
    save_steps: int = Field(5, ge=1, description="GRPO trainer checkpoint every N steps (resume inside a stage)")
    kl_beta: float = Field(0.0, ge=0, description="GRPO KL coefficient (0: no reference model)")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field("constant", description="learning-rate decay")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantages divided by the reward std of the group, of the batch, or not at all")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description="TRL's GRPO loss aggregation")
    freeze_vision: bool = Field(False, description="train the language model only; the vision tower stays fixed")


class LoraSettings(BaseModel):
    """LoRA adapters (peft) instead of full fine-tuning; merged into the saved checkpoint."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainingConfig(BaseModel):
    """Where and how the GRPO stages run."""

    model_config = ConfigDict(extra="forbid")
    launcher: Literal["in-process", "subprocess", "accelerate"] = Field(
        "in-process", description="in-process (embedded default), subprocess (a fresh process per GRPO stage, "
        "memory freed after it) or accelerate (`accelerate launch --config_file accelerate_config`)")
    accelerate_config: str | None = Field(None, description="accelerate config file (multi-GPU, DeepSpeed ZeRO)")
    lora: LoraSettings | None = Field(None, description="train LoRA adapters instead of all weights")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="with engine vllm: TRL's vLLM rollouts inside the trainer, or from `trl vllm-serve`")
    vllm_server_base_url: str | None = Field(None, description="vllm_mode server: the `trl vllm-serve` URL")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int | None = Field(None, ge=6, description="ShapesBench items per evaluation (all when unset)")
    shuffled: bool = Field(False, description="also score ShapesBench with shuffled images (doubles its time)")
    split: Literal["test", "validation"] = Field(
        "test", description="ShapesBench items: test (claims) or validation (an independent draw to tune on)")
    votes: int = Field(0, ge=0, description="also sample M answers per benchmark item at the Reasoner's "
                       "temperature: pass@1, majority-vote accuracy, token entropy (0: greedy only); on the base "
                       "(iteration 0) this is its headroom, what majority-vote self-play can at most distill")
    votes_every_iteration: bool = Field(True, description="sample the votes in every iteration's evaluation "
                                        "(false: in the base's only, where the headroom is measured)")
    benchmarks: list[str] = Field(default_factory=lambda: ["shapes"], min_length=1,
                                  description="shapes, mmmu, mm-vet, realworldqa, visnumbench, mathverse, "
                                              "math-vision, hallusionbench")
    sources: dict[str, str] = Field(default_factory=dict, description="benchmark name -> its data (default ./data/<name>)")
    probe: int = Field(64, ge=0, description="unlabeled probe questions, written once a run by the base model as "
                       "Questioner on a seeded draw of corpus images; every evaluation answers them (greedy, "
                       "method.m_curation samples, greedy with another image) for the label-free probe.* statistics "
                       "(0: no probe)")


    @field_validator("benchmarks")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        from .benchmarks import BenchmarkError
        from .evaluate import check_benchmark

        for name in names:
            try:
                check_benchmark(name)
            except BenchmarkError as e:
                raise ValueError(str(e)) from None
        return names


PROBE_STATISTICS = ("probe.vote_disagreement", "probe.shuffle_stability", "probe.agreement_previous",
                    "probe.confidence")
"""The label-free statistics of an evaluation's probe (``measure.probe_statistics``) a run can keep an
iteration by."""


class SelectionConfig(BaseModel):
    """Which iteration's Reasoner a run keeps as its output (``measure.kept_iteration``), chosen without ground
    truth: on a user's own images there is no benchmark to choose by."""

    model_config = ConfigDict(extra="forbid")
    statistic: Literal["last", *PROBE_STATISTICS] = Field(
        "last", description="the last iteration, or the iteration whose probe statistic is best")
    best: Literal["lowest", "highest"] = Field("lowest", description="which end of the statistic is best")
    tolerance: float = Field(0.0, ge=0, description="keep the earliest iteration within this of the best value")


class VisPlayConfig(BaseModel):
    """Everything a self-evolution run depends on. A run's stages are cached on slices of this."""

    model_config = ConfigDict(extra="forbid")
    preset: str = Field("custom", description="name of the preset this config came from")
    base_model: str = Field("base", description="local HF checkpoint path, or 'base' for the embedded tiny VLM")
    trust_remote_code: bool = False
    corpus: str = Field("embedded", description="'embedded' (the shapes world), a folder of images, a parquet "
                        "file, a datasets save_to_disk folder, or datasets:NAME[:SPLIT]")
    corpus_size: int = Field(256, ge=1, description="images written for the embedded corpus")
    max_image_pixels: int = Field(1280 * 28 * 28, ge=64, description="images are downscaled to this pixel budget")
    images_per_iteration: int = Field(32, ge=1, description="images drawn from the corpus each iteration")
    iterations: int = Field(3, ge=1)
    group_size: int = Field(8, ge=2, description="G: questions sampled per image")
    candidates_per_image: int = Field(8, ge=1, description="questions the updated Questioner writes per image")
    question_source: Literal["questioner", "grammar", "oracle-grammar"] = Field(
        "questioner", description="embedded world only, where the candidates come from: the Questioner; the world's "
        "question grammar drawn blind, without the image (grammar: no Questioner); or drawn from each image's scene "
        "(oracle-grammar: ground truth chooses the questions, never their answers). The Reasoner's vote, curation "
        "and all after are the same; without the Questioner it is not trained (questioner.steps 0)")
    method: MethodConfig = Field(default_factory=MethodConfig)
    questioner: RoleConfig = Field(default_factory=lambda: RoleConfig(max_new_tokens=32))
    reasoner: RoleConfig = Field(default_factory=RoleConfig)
    oracle_reasoner_error: float | None = Field(
        None, ge=0, le=1, description="embedded world only: vote with an oracle Reasoner that answers from the "
        "scene, wrong at this rate (the paper's sanity check); unset: the Reasoner model votes")
    ceiling: Literal["none", "curated", "fresh"] = Field(
        "none", description="embedded world only, the ceiling arms: the Reasoner trains on the oracle's true answers "
        "to the curated questions (curated) or to fresh world questions, steps × prompts_per_step of them (fresh), "
        "instead of pseudo-labels: the most any labeller could give")
    engine: Literal["hf", "vllm"] = Field("hf", description="generation engine for rollouts and scoring")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    seed: int = 0

    @field_validator("method", mode="before")
    @classmethod
    def _method_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return method_preset(value)
        if isinstance(value, dict) and "preset" in value:
            rest = dict(value)
            return MethodConfig.model_validate({**method_preset(rest.pop("preset")).model_dump(), **rest})
        return value

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kl_beta" in data:
            raise ValueError("kl_beta is a setting of each role now: questioner.kl_beta and reasoner.kl_beta")
        return data

    @model_validator(mode="after")
    def _check(self) -> "VisPlayConfig":
        if self.corpus != "embedded" and not self.corpus.startswith("datasets:") and not Path(self.corpus).exists():
            raise ValueError(f"corpus: {self.corpus!r} does not exist")
        if self.base_model != "base" and not Path(self.base_model).exists():
            raise ValueError(f"base_model: {self.base_model!r} does not exist (a local checkpoint folder)")
        accelerate_config = self.training.accelerate_config
        if accelerate_config and not Path(accelerate_config).exists():
            raise ValueError(f"training.accelerate_config: {accelerate_config!r} does not exist")
        if self.ceiling != "none" and self.corpus != "embedded":
            raise ValueError("ceiling: the oracle's answers need the scenes of the embedded corpus")
        if self.oracle_reasoner_error is not None and self.corpus != "embedded":
            raise ValueError("oracle_reasoner_error: an oracle Reasoner needs the scenes of the embedded corpus")
        if self.question_source != "questioner" and self.corpus != "embedded":
            raise ValueError(f"question_source {self.question_source}: the world's question grammar needs the "
                             "embedded corpus")
        if self.question_source != "questioner" and self.questioner.steps:
            raise ValueError(f"question_source {self.question_source}: the Questioner writes no candidate, so it is "
                             "not trained: set questioner.steps=0")
        if self.selection.statistic != "last" and not self.eval.probe:
            raise ValueError(f"selection.statistic {self.selection.statistic} needs the probe: set eval.probe above 0")
        if self.questioner.num_generations != self.group_size:
            raise ValueError(f"questioner.num_generations ({self.questioner.num_generations}) must equal "
                             f"group_size G ({self.group_size})")
        return self

    @property
    def base_model_path(self) -> Path:
        return BASE_CHECKPOINT if self.base_model == "base" else Path(self.base_model)

    def digest(self, *keys: str) -> str:
        """A stable hash of the named top-level fields (all when none): the config part of cache keys."""
        data = self.model_dump(mode="json")
        picked = {k: data[k] for k in (keys or sorted(data))}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def code_versions() -> dict[str, str]:
    """What a stage computes beyond its configuration, part of every stage's cache key (with the stage's
    own format number, ``tasks.stages.FORMATS``): the visplay package (prompts, answer matching, rewards),
    ShapesBench's version (the world and its oracle), transformers and TRL. Read from the installed packages'
    metadata (once a process: each lookup scans the installed distributions); a stage restored from cache
    imports neither library."""
    from . import bench

    installed = _installed_versions()
    return {"visplay": installed["visplay"], "bench": bench.VERSION, "transformers": installed["transformers"],
            "trl": installed["trl"]}


@functools.cache
def _installed_versions() -> dict[str, str]:
    return {name: version(name) for name in ("visplay", "transformers", "trl")}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {p!r} is not a section")
    if leaf == "method" and isinstance(value, str) and isinstance(node.get("method"), dict):
        node["method"] = {"preset": value}
    else:
        node[leaf] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=3", "c=x"]`` → ``[("a.b", 3), ("c", "x")]``; values are read as YAML scalars."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r}: expected key=value")
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> VisPlayConfig:
    """A config from a preset name or a YAML file (``demo`` when None), with ``key=value`` overrides."""
    source = source or "demo"
    path = PRESETS_DIR / f"{source}.yaml" if str(source) in preset_names() else Path(source)
    if not path.exists():
        raise ConfigError(f"config {str(source)!r}: no such file or preset (presets: {', '.join(preset_names())})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of keys to values")
    if "method" in data and isinstance(data["method"], str):
        data["method"] = {"preset": data["method"]}
    data.setdefault("preset", path.stem)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    try:
        return VisPlayConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None


def _explain(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        shown = err["type"] != "extra_forbidden" and err["loc"]  # not the whole config for a config-wide error
        lines.append(f"{key}: {err['msg']}" + (f" (got {err['input']!r})" if shown else ""))
    return "invalid configuration:\n  " + "\n  ".join(lines)
