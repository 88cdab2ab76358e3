"""The bootstrap: a few real steps from scratch and from a checkpoint (the capacity control), saved atomically
with a log whose final evaluation carries the headroom measurement."""

from safetensors.torch import load_file

from visplay_core.bootstrap import BootstrapConfig, bootstrap
from visplay_core.config import BASE_CHECKPOINT
from visplay_core.model import load_model

SMALL = dict(steps=2, batch_size=4, probe_every=1, eval_every=0, final_limit=6, final_votes=2, threads=1)


def test_bootstrap_continues_from_a_checkpoint(tmp_path):
    log = bootstrap(tmp_path / "more", BootstrapConfig(init=str(BASE_CHECKPOINT), lr=1e-4, **SMALL), progress=False)
    before, after = load_file(BASE_CHECKPOINT / "model.safetensors"), load_file(tmp_path / "more" / "model.safetensors")
    assert before.keys() == after.keys() and any(not (before[k] == after[k]).all() for k in before)
    assert [p["step"] for p in log["probes"]] == [1, 2]
    assert log["final"]["votes"] == 2 and 0 <= log["final"]["majority_accuracy"] <= 1
    assert log["config"]["init"] == str(BASE_CHECKPOINT)
    load_model(tmp_path / "more")


def test_bootstrap_from_scratch_saves_a_whole_checkpoint(tmp_path):
    log = bootstrap(tmp_path / "fresh", BootstrapConfig(**SMALL), progress=False)
    assert (tmp_path / "fresh" / "bootstrap_log.json").exists() and (tmp_path / "fresh" / "tokenizer.json").exists()
    assert log["final"]["n"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name != "fresh"]  # written atomically: no temporary left
