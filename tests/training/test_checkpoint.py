"""Checkpoint files: never executed when loaded, bounded on disk, and a weights-only export."""

import json
import shutil

import pytest
import safetensors
import safetensors.torch
import torch

from gptlab.cli import sample
from gptlab.errors import CheckpointError
from gptlab.rundir import EXPORT
from gptlab.training.checkpoint import load_checkpoint, load_model
from gptlab.training.run import train


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the payload runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, compose):
    """A short run with an evaluation every 2 steps, last.ckpt rewritten each time, and an export."""
    d = tmp_path_factory.mktemp("ckrun")
    cfg = compose("max_iters=12", "eval_interval=2", "always_save_checkpoint=true", "export_weights=true")
    return d, train(cfg, d)


def test_malicious_checkpoint_is_refused_and_never_runs(run, compose, tmp_path, capsys):
    good = load_checkpoint(run[0] / "last.ckpt")
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({**good, "gptlab": {**good["gptlab"], "note": Payload(marker)}}, evil)

    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        load_checkpoint(evil)
    with pytest.raises(SystemExit) as e:
        sample.main([f"ckpt={evil}", "max_new_tokens=5", "device=cpu"])
    assert e.value.code == 2 and "error: refused to load" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="refused to load"):
        train(compose("max_iters=20", "init_from=resume", f"ckpt_path={evil}"), tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copy(evil, tmp_path / "b" / "last.ckpt")
    with pytest.raises(CheckpointError, match="refused to load"):
        train(compose("max_iters=20", "resume=true"), tmp_path / "b")
    assert not marker.exists()
    assert not (tmp_path / "a" / "metrics.json").exists() and not (tmp_path / "b" / "metrics.json").exists()

    # the control: an unrestricted torch.load does run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_disk_holds_last_and_best_only_and_reports_sizes(run):
    d, metrics = run
    assert sorted(p.name for p in d.iterdir() if p.suffix in (".ckpt", ".pt", ".safetensors", ".tmp")) == [
        "best.ckpt",
        "last.ckpt",
        EXPORT,
    ]
    assert not list(d.glob(".*.tmp"))  # no temporary files left behind
    sizes = metrics["checkpoint_bytes"]
    assert sizes == {n: (d / n).stat().st_size for n in ("last.ckpt", "best.ckpt", EXPORT)}
    assert json.loads((d / "metrics.json").read_text())["checkpoint_bytes"] == sizes


def test_weights_export_is_small_safe_and_samples(run, compose, tmp_path):
    d, metrics = run
    sizes = metrics["checkpoint_bytes"]
    # AdamW keeps two moments per weight: the export is about a third of a training checkpoint
    assert sizes[EXPORT] < 0.45 * sizes["best.ckpt"]
    # safetensors: tensors and a JSON header, nothing to unpickle; the model shape and tokenizer in its metadata
    with safetensors.safe_open(str(d / EXPORT), framework="pt") as f:
        info = json.loads(f.metadata()["gptlab"])
        names = set(f.keys())
    assert info["tokenizer"]["tokenizer"] == "char" and info["model_config"]["n_layer"] == 2
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names  # the tied head, stored once
    header = (d / EXPORT).read_bytes()
    assert json.loads(header[8 : 8 + int.from_bytes(header[:8], "little")])["__metadata__"]["format"] == "pt"
    model, _ = load_model(d / EXPORT)
    best, _ = load_model(d / "best.ckpt")  # the export holds the best weights
    x = torch.randint(0, 65, (2, 16))
    assert torch.equal(model(x)[0], best(x)[0])
    out = sample.generate(str(d / EXPORT), "ROMEO:", 1, 10, 0.8, 20, 1, device="cpu")
    assert out[0].startswith("ROMEO:") and len(out[0]) == len("ROMEO:") + 10
    with pytest.raises(CheckpointError, match="weights only .*cannot continue"):
        train(compose("max_iters=20", "init_from=resume", f"ckpt_path={d / EXPORT}"), tmp_path)


def test_a_weights_file_without_gptlabs_metadata_is_refused(run, tmp_path):
    d, _ = run
    bare = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="without gptlab's metadata .* init_from=hf:<its folder>"):
        load_model(bare)
    damaged = tmp_path / "cut.safetensors"
    damaged.write_bytes((d / EXPORT).read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(damaged)
