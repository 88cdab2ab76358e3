"""The run configuration: presets, ``key=value`` overrides, validation messages, digests."""

from pathlib import Path

import pytest
import yaml

from visplay_core.config import (
    PRESETS_DIR,
    ConfigError,
    VisPlayConfig,
    load_config,
    parse_overrides,
    preset_names,
)
from visplay_core.method import method_preset


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real saved tiny checkpoint folder (what base_model points at)."""
    from visplay_core.bootstrap import world_texts
    from visplay_core.model import build_tiny_vlm, save_checkpoint

    model, processor = build_tiny_vlm(world_texts(50, 0), seed=0)
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_checkpoint(model, processor, path)
    return path


def _local_overrides(name, checkpoint):
    # The paper presets point at folders the user downloads first; run them on local stand-ins.
    return [f"base_model={checkpoint}", "corpus=embedded"] if name.startswith("paper") else []


def test_preset_names():
    assert preset_names() == ["demo", "paper-3b", "paper-7b", "smoke", "study"]


@pytest.mark.parametrize("name", ["demo", "paper-3b", "paper-7b", "smoke"])
def test_every_preset_loads_with_its_values(name, checkpoint):
    config = load_config(name, _local_overrides(name, checkpoint))
    assert isinstance(config, VisPlayConfig)
    assert config.preset == name
    raw = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
    for key, value in raw.items():
        if key in ("base_model", "corpus") and name.startswith("paper"):
            continue
        if key == "method":
            preset = value if isinstance(value, str) else value["preset"]
            extra = {} if isinstance(value, str) else {k: v for k, v in value.items() if k != "preset"}
            assert config.method == method_preset(preset).model_copy(update=extra)
        elif isinstance(value, dict):
            section = getattr(config, key)
            for sub, sub_value in value.items():
                assert getattr(section, sub) == sub_value, f"{name}: {key}.{sub}"
        else:
            assert getattr(config, key) == value, f"{name}: {key}"
    assert config.questioner.num_generations == config.group_size


def test_default_source_is_demo():
    assert load_config() == load_config("demo")


def test_smoke_preset_overrides_method_fields():
    config = load_config("smoke")
    assert (config.method.m_questioner, config.method.m_curation) == (4, 4)
    assert config.method.tau_low == 0.25 and config.method.uncertainty == "1-|2c-1|"  # the rest is the paper's


def test_paper_presets_need_their_local_folders():
    with pytest.raises(ConfigError, match=r"corpus: './data/vision-47k' does not exist"):
        load_config("paper-3b")
    with pytest.raises(ConfigError, match=r"base_model: './models/Qwen2.5-VL-3B-Instruct' does not exist"):
        load_config("paper-3b", ["corpus=embedded"])


def test_paper_3b_on_a_saved_tiny_checkpoint(checkpoint):
    config = load_config("paper-3b", [f"base_model={checkpoint}", "corpus=embedded"])
    assert config.base_model == str(checkpoint)
    assert config.base_model_path == checkpoint
    assert config.corpus == "embedded"
    assert config.questioner.kl_beta == config.reasoner.kl_beta == 0.01 and config.engine == "vllm"
    assert (config.questioner.steps, config.reasoner.steps) == (20, 20)
    assert config.questioner.learning_rate == 1e-6
    assert config.reasoner.max_new_tokens == 1024
    assert config.method == method_preset("paper")
    assert config.eval.limit is None
    # A corpus folder that exists is accepted too.
    assert load_config("paper-3b", [f"base_model={checkpoint}", f"corpus={checkpoint.parent}"]).corpus == str(
        checkpoint.parent)


def test_base_keyword_uses_the_embedded_checkpoint():
    config = load_config("demo")
    assert config.base_model == "base"
    assert config.base_model_path.name == "tiny-base"


def test_dotted_overrides_with_yaml_typed_values():
    config = load_config("demo", [
        "iterations=5",
        "reasoner.learning_rate=2.5e-5",
        "questioner.temperature=0.7",
        "eval.limit=null",
        "eval.shuffled=true",
        "trust_remote_code=yes",  # YAML 1.1 boolean
        "seed=42",
        "engine=vllm",
    ])
    assert config.iterations == 5 and isinstance(config.iterations, int)
    assert config.reasoner.learning_rate == 2.5e-5
    assert config.questioner.temperature == 0.7
    assert config.eval.limit is None
    assert config.eval.shuffled is True
    assert config.trust_remote_code is True
    assert config.seed == 42
    assert config.engine == "vllm"
    assert load_config("demo", ["max_image_pixels=12544"]).max_image_pixels == 12544
    assert "max_image_pixels:" in _error(["max_image_pixels=10"])  # below its minimum
    # Untouched values stay the preset's.
    assert config.reasoner.steps == 24 and config.questioner.steps == 10


def test_later_override_wins():
    assert load_config("demo", ["seed=1", "seed=2"]).seed == 2


def test_parse_overrides():
    assert parse_overrides(["a.b=3", "c=x", "d=", "e=[1, 2]", "f=a=b"]) == [
        ("a.b", 3), ("c", "x"), ("d", None), ("e", [1, 2]), ("f", "a=b")]
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["seed"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["=3"])


def test_method_preset_by_name_and_field():
    official = load_config("demo", ["method=official-code"])
    assert official.method == method_preset("official-code")
    tuned = load_config("demo", ["method.tau_low=0.3"])
    assert tuned.method == load_config("demo").method.model_copy(update={"tau_low": 0.3})
    both = load_config("demo", ["method=official-code", "method.tau_high=0.9"])
    assert both.method == method_preset("official-code").model_copy(update={"tau_high": 0.9})
    # On the smoke preset (method given as a section), a method name replaces the whole section.
    assert load_config("smoke", ["method=official-code"]).method == method_preset("official-code")
    assert load_config("smoke", ["method.tau_low=0.3"]).method.m_questioner == 4


def test_method_by_name_in_a_file_without_method(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("group_size: 4\nquestioner: {num_generations: 4}\n")
    config = load_config(path, ["method=official-code"])
    assert config.preset == "mine"
    assert config.method == method_preset("official-code")
    assert load_config(path).method == method_preset("paper")
    assert load_config(path, ["method.tau_low=0.1"]).method.tau_low == 0.1


def _error(overrides, source="demo"):
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return str(info.value)


def test_unknown_key_is_named():
    message = _error(["batch_size=3"])
    assert "batch_size" in message and "Extra inputs are not permitted" in message
    message = _error(["reasoner.lr=0.1"])
    assert "reasoner.lr" in message and "Extra inputs are not permitted" in message
    assert "method.lambda_" in _error(["method.lambda_=2"])


def test_wrong_type_is_named_with_the_value():
    message = _error(["iterations=many"])
    assert "iterations:" in message and "valid integer" in message and "'many'" in message
    message = _error(["eval.shuffled=maybe"])
    assert "eval.shuffled:" in message and "valid boolean" in message
    message = _error(["engine=tgi"])
    assert "engine:" in message and "'hf' or 'vllm'" in message


def test_inverted_curation_window_is_named():
    message = _error(["method.tau_low=0.9"])  # the paper's tau_high is 0.75
    assert "method" in message and "tau_low=0.9" in message and "tau_high=0.75" in message


def test_group_size_below_two():
    message = _error(["group_size=1", "questioner.num_generations=1"])
    assert "group_size:" in message and "greater than or equal to 2" in message
    assert "questioner.num_generations:" in message  # GRPO needs a group too


def test_missing_base_model_path_is_named(tmp_path):
    missing = tmp_path / "nope"
    message = _error([f"base_model={missing}"])
    assert "base_model:" in message and str(missing) in message and "does not exist" in message


def test_missing_corpus_folder_is_named(tmp_path):
    message = _error([f"corpus={tmp_path / 'none'}"])
    assert "corpus:" in message and "does not exist" in message


def test_questioner_generations_must_equal_group_size():
    message = _error(["questioner.num_generations=4"])  # demo's group_size is 8
    assert "questioner.num_generations (4)" in message and "group_size" in message and "(8)" in message
    assert load_config("demo", ["questioner.num_generations=4", "group_size=4"]).group_size == 4


def test_a_scalar_is_not_a_section():
    with pytest.raises(ConfigError, match=r"seed\.x: 'seed' is not a section"):
        load_config("demo", ["seed.x=1"])


def test_unknown_source_lists_presets(tmp_path):
    with pytest.raises(ConfigError, match="no such file or preset.*demo, paper-3b, paper-7b, smoke"):
        load_config("nope")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, ["questioner.num_generations=8"]).preset == "empty"  # all defaults


def test_digest():
    config = load_config("demo")
    assert config.digest() == load_config("demo").digest()
    assert len(config.digest()) == 16
    changed = load_config("demo", ["iterations=4"])
    assert changed.digest() != config.digest()
    assert changed.digest("iterations") != config.digest("iterations")
    # Only the named fields count.
    assert changed.digest("seed", "method") == config.digest("seed", "method")
    assert load_config("demo", ["method.tau_low=0.3"]).digest("method") != config.digest("method")
    assert load_config("demo", ["reasoner.steps=21"]).digest("questioner") == config.digest("questioner")
    assert load_config("demo", ["reasoner.steps=21"]).digest("reasoner") != config.digest("reasoner")
    # Setting a field to the value it already has changes nothing.
    assert load_config("demo", ["iterations=3", "seed=0", "method.tau_low=0.25"]).digest() == config.digest()
    # Key order of the request does not matter.
    assert config.digest("seed", "method") == config.digest("method", "seed")


def test_configs_round_trip_through_yaml(tmp_path):
    config = load_config("smoke", ["method.tau_low=0.3"])
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(Path(path)) == config
