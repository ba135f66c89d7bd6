"""`gptlab export <run> --format hf <dir>` and `python -m gptlab.export` as a user types them, on a
real GPT-2 BPE run: transformers loads what they write and computes the run's logits."""

import pytest
import torch

from gptlab.rundir import EXPORT
from gptlab.training.checkpoint import load_model
from gptlab.training.run import train

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, compose, bpe_root):
    d = tmp_path_factory.mktemp("bpe_run")
    cfg = compose(
        "data=shakespeare", f"data.root={bpe_root}", "max_iters=2", "eval_interval=2", "warmup_iters=0", "bias=false"
    )
    cfg.export_weights = True
    train(cfg, d)
    return d


def test_export_a_run_folder_and_load_it_with_transformers(bpe_run, run_cli, tmp_path):
    p = run_cli("gptlab", "export", str(bpe_run), "--format", "hf", str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"wrote {tmp_path / 'hf'}: config.json" in p.stdout and "GPT2LMHeadModel.from_pretrained(" in p.stdout
    ours, _ = load_model(bpe_run)  # the run folder: its best.ckpt
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    x = torch.tensor([tok("ROMEO:\nBut, soft! what light through yonder window breaks?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x, x)[0], rtol=0, atol=1e-5)
    # the weights file exports the same model; the folder, an earlier export, is replaced
    p = run_cli("gptlab.export", str(bpe_run / EXPORT), str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr[-2000:]


def test_sample_reads_the_weights_file(bpe_run, run_cli):
    p = run_cli("gptlab.sample", f"ckpt={bpe_run / EXPORT}", "start=ROMEO:", "num_samples=1", "max_new_tokens=5")
    assert p.returncode == 0 and p.stdout.startswith("ROMEO:"), p.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere", "out"], "error: checkpoint 'nowhere' does not exist"),
        (["{run}", "{run}"], "holds files that are not an earlier gptlab export"),
    ],
)
def test_bad_exports_give_one_line(bpe_run, run_cli, args, message):
    p = run_cli("gptlab.export", *[a.format(run=bpe_run) for a in args])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
