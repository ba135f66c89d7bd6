"""What only a CUDA GPU exercises: bf16 / fp16 steps, inductor's GPU kernels across a sweep, the
document mask on the GPU attention kernels, FSDP, resume on the device, the bench's GPU presets.

`make test-gpu` runs these (pytest -m gpu), meant for about 3 minutes on one H200; without CUDA
they are skipped, and `make test` deselects them."""

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch

from gptlab.bench import bench
from gptlab.data.dataset import DataSpec, ensure_prepared, load_meta, open_documents
from gptlab.data.packing import PackedRows, unpack_batch
from gptlab.model import GPT, GPTConfig
from gptlab.rundir import LAST
from gptlab.training.checkpoint import checkpoint_step, load_model
from gptlab.training.run import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make test-gpu on a GPU machine)"),
]

CUDA = ["device=cuda"]


class Precision(L.Callback):
    """The trainer's precision plugin and the dtype the forward pass computes in."""

    def __init__(self):
        self.precision, self.logits_dtype = None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.precision is None:
            self.precision = trainer.precision
            x, _, kw = unpack_batch(batch)
            with trainer.precision_plugin.forward_context(), torch.no_grad():
                self.logits_dtype = pl_module.model(x, **kw)[0].dtype


@pytest.mark.parametrize(("dtype", "precision"), [("bfloat16", "bf16-mixed"), ("float16", "16-mixed")])
def test_half_precision_training_steps(dtype, precision, compose, tmp_path):
    probe = Precision()
    m = train(compose(*CUDA, f"dtype={dtype}", "max_iters=30", "eval_interval=30"), tmp_path / "run", callbacks=[probe])
    assert probe.precision == precision
    assert probe.logits_dtype == getattr(torch, dtype)
    assert m["iters"] == 30 and m["peak_memory_kind"] == "cuda"
    # a step that learnt: the val loss fell from the random guess's (ln 65 = 4.17)
    assert m["evals"][-1]["val_loss"] < m["evals"][0]["val_loss"] - 0.3
    assert math.isfinite(m["final_train_loss"])  # float16: the grad scaler kept the steps finite


def test_compiled_sweep_on_the_gpu(tiny, tmp_path):
    # inductor's Triton kernels, one process for the whole sweep as Hydra's basic launcher runs it
    args = [
        "-m",
        *(o for o in tiny if not o.startswith(("n_embd=", "device="))),
        *CUDA,
        "n_layer=1",
        "n_embd=32,64,96",
        "dropout=0.1",
        "max_iters=4",
        "eval_interval=2",
        "eval_iters=1",
        "compile=true",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    p = subprocess.run([sys.executable, "-m", "gptlab.train", *args], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = sorted((d for d in (tmp_path / "sweep").iterdir() if d.is_dir()), key=lambda d: int(d.name.split("_")[0]))
    metrics = [json.loads((d / "metrics.json").read_text()) for d in jobs]
    assert len(metrics) == 3
    for m in metrics:
        assert (m["compiled"], m["compile_fallback"], m["iters"]) == (True, None, 4)
    print("first_step_s:", [m["first_step_s"] for m in metrics])


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune-no-cudagraphs"])
def test_compile_modes_train_like_the_default(mode, compose, tmp_path):
    # CUDA graphs replay into the same memory each step: the losses kept between steps must be copies
    common = (*CUDA, "compile=true", "max_iters=20", "eval_interval=10", "eval_iters=2", "dropout=0")
    base = train(compose(*common), tmp_path / "default")
    m = train(compose(*common, f"compile_mode={mode}"), tmp_path / mode)
    assert (m["compiled"], m["compile_fallback"]) == (True, None)
    for a, b in zip(base["evals"], m["evals"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=2e-3)
    assert m["final_train_loss"] == pytest.approx(base["final_train_loss"], abs=2e-3)


def test_document_mask_on_the_gpu_attention_path(data_root):
    spec = DataSpec(name="shakespeare_char", root=str(data_root), source="tinyshakespeare", tokenizer="char")
    ensure_prepared(spec, log=lambda m: None, documents=True)
    d = data_root / "shakespeare_char"
    b = PackedRows(d / "train.bin", "uint16", open_documents(d, "train", load_meta(d)), 64, 32, seed=3).sample()
    row = int(torch.argmax(b["doc"][:, -1]))  # a row holding several documents
    doc = b["doc"][row].cuda()
    x, y, kw = unpack_batch({k: (v[row : row + 1].cuda() if torch.is_tensor(v) else v) for k, v in b.items()})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)).cuda()
    second = doc == 1
    with torch.no_grad():
        packed, _ = model(x, y, **kw)
        alone, _ = model(x[:, second], x[:, second])
        plain, _ = model(x, y)
        # float32: the second document of the row, computed inside the row, equals it computed alone
        assert torch.allclose(packed[0, second], alone[0], atol=1e-4)
        # (without the mask and positions it does see the first document)
        assert not torch.allclose(plain[0, second], alone[0], atol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):  # the masked kernel in bf16, as training runs it
            packed16, _ = model(x, y, **kw)
            alone16, _ = model(x[:, second], x[:, second])
        gap = (packed16[0, second].float() - alone16[0].float()).abs().max()
        assert gap < 0.1 * (plain[0, second] - alone[0]).abs().max() + 1e-2  # bf16 rounding, not leakage


def test_packed_batches_train_on_the_gpu(compose, tmp_path):
    m = train(compose(*CUDA, "data.batching=packed", "max_iters=10", "eval_interval=10"), tmp_path / "run")
    assert m["iters"] == 10 and m["padding_efficiency"] == 1.0
    assert m["final_val_loss"] < m["evals"][0]["val_loss"]


def test_fsdp_on_one_gpu_and_its_checkpoint_loads_back(compose, tmp_path):
    run = tmp_path / "run"
    fsdp = [*CUDA, "trainer=fsdp", "trainer.devices=1", "eval_interval=5"]
    m = train(compose(*fsdp, "max_iters=10"), run)
    assert m["iters"] == 10
    model, info = load_model(run / LAST, "cuda")  # the full (rank-0) checkpoint into a plain GPT
    assert info["step"] == 10 and checkpoint_step(run / LAST) == 10
    x = torch.randint(0, 65, (1, 16), device="cuda")
    with torch.no_grad():
        assert torch.isfinite(model(x)[0]).all()
    m = train(compose(*fsdp, "max_iters=15", "init_from=resume"), run)  # and FSDP resumes from it
    assert m["iters"] == 15 and [e["step"] for e in m["evals"]] == [0, 5, 10, 15]


def test_resume_on_the_gpu_matches_an_unbroken_run(compose, tmp_path):
    common = [*CUDA, "dtype=float32", "dropout=0.1", "eval_interval=10", "lr_decay_iters=20", "eval_iters=2"]
    straight = train(compose(*common, "max_iters=20"), tmp_path / "straight")
    run = tmp_path / "run"
    train(compose(*common, "max_iters=10"), run)
    assert checkpoint_step(run / LAST) == 10
    resumed = train(compose(*common, "max_iters=20", "init_from=resume"), run)
    assert [e["step"] for e in resumed["evals"]] == [0, 10, 20]
    # the same batches, dropout masks (the CUDA RNG state is in the checkpoint) and optimizer state;
    # only the GPU's non-deterministic reductions differ
    assert resumed["final_val_loss"] == pytest.approx(straight["final_val_loss"], abs=1e-3)
    assert resumed["final_train_loss"] == pytest.approx(straight["final_train_loss"], abs=1e-3)


def test_bench_gpu_presets_for_a_few_steps(tmp_path, capsys):
    # the default GPU presets (baby, and GPT-2 124M compiled in bf16 on BPE); data prepared in tmp_path
    out = tmp_path / "bench.json"
    bench.main(
        ["--steps", "1,2", "--rounds", "1", "--intervals", "none", "--no-data", "--json", str(out)]
        + [f"data.root={tmp_path / 'data'}", "sample_tokens=0", "eval_sample_tokens=0"]
    )
    report = json.loads(out.read_text())
    assert len(report["benches"]) == 2  # baby, then gpt2 (one interval setting each)
    for b in report["benches"]:
        assert [s["side"] for s in b["sides"]] == ["gptlab", "plain"]
        for side in b["sides"]:
            assert side["tokens_per_s"] > 0 and 0 < side["mfu"] < 1, side
    printed = capsys.readouterr().out
    assert "== baby" in printed and "== gpt2" in printed and "MFU against" in printed
