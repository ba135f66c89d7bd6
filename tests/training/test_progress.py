"""Progress lines: step/max_iters, MFU against a known peak and the time left, with the one host
sync per line that ProgressLog always had; the peak table that MFU and the bench share."""

import logging
import re

import lightning as L
import pytest
import torch

from gptlab.training import flops
from gptlab.training.callbacks.logs import ProgressLog, duration
from gptlab.training.run import train

LINE = re.compile(
    r"iter (\d+)/(\d+): loss [\d.]+, ([\d.]+) ms/step, ([\d,]+) tok/s, MFU ([\d.]+)%, lr [\d.e+-]+.*, ETA (\d+)s$"
)


@pytest.mark.parametrize(
    "name, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 PCIe", "bfloat16", 756e12),
        ("NVIDIA H200", "float16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "float32", 156e12),  # float32 matmuls run as TF32
        ("NVIDIA L40S", "bfloat16", 362e12),
        ("NVIDIA L4", "bfloat16", 121e12),
        ("NVIDIA L40", "bfloat16", None),  # not L4, not L40S: not in the table
        ("NVIDIA GH200 480GB", "bfloat16", None),
        ("Tesla V100-SXM2-16GB", "bfloat16", None),
    ],
)
def test_peak_table_matches_device_names_by_word(name, dtype, peak):
    assert flops.table_peak(name, dtype) == peak


def test_training_peak_without_a_table_figure():
    assert flops.training_peak("cpu", "float32", None)[0] is None  # no MFU on CPUs unless given
    assert flops.training_peak("cpu", "float32", 2.5) == (2.5e12, "peak_tflops=2.5")


def test_duration_reads_at_a_glance():
    assert [duration(s) for s in (0.4, 45, 192, 7500)] == ["0s", "45s", "3m12s", "2h05m"]


class CountSyncs(L.Callback):
    """Counts reads of device values (item, float, tolist) inside ProgressLog's hook."""

    def __init__(self, monkeypatch):
        self.inside, self.reads, self.lines = False, 0, 0
        for name in ("item", "__float__", "tolist"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(original))
        hook = ProgressLog.on_train_batch_end

        def wrapped(progress, trainer, *args):
            self.inside, logged = True, progress._last_logged
            try:
                hook(progress, trainer, *args)
            finally:
                self.inside = False
                self.lines += progress._last_logged != logged

        monkeypatch.setattr(ProgressLog, "on_train_batch_end", wrapped)

    def _counted(self, original):
        def read(t, *a, **kw):
            self.reads += self.inside
            return original(t, *a, **kw)

        return read


def test_progress_lines_give_steps_mfu_and_time_left(compose, tmp_path, caplog, monkeypatch):
    counter = CountSyncs(monkeypatch)
    cfg = compose("max_iters=10", "eval_interval=5", "peak_tflops=0.5")
    with caplog.at_level(logging.INFO, logger="gptlab"):
        metrics = train(cfg, tmp_path / "run", callbacks=[counter])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iter ")]
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines
    assert [LINE.match(line).group(1, 2) for line in lines] == [("5", "10"), ("10", "10")]
    assert LINE.match(lines[-1]).group(6) == "0"  # nothing left after the last step
    fpt = metrics["params"] * 6 + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size  # GPT.flops_per_token
    for line in lines:
        tok_s, mfu = float(LINE.match(line).group(4).replace(",", "")), float(LINE.match(line).group(5))
        assert mfu == pytest.approx(100 * tok_s * fpt / 0.5e12, abs=0.051)
    assert metrics["mfu"] == pytest.approx(metrics["tokens_per_s"] * fpt / 0.5e12)
    assert counter.lines == 2 and counter.reads == 2  # one read per line: the loss, as before


def test_no_mfu_on_the_cpu_without_a_peak(compose, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gptlab"):
        metrics = train(compose("max_iters=5", "eval_interval=5"), tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iter ")]
    assert lines and "MFU" not in lines[0] and lines[0].startswith("iter 5/5: ")
    assert metrics["mfu"] is None
