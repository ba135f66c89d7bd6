"""`--cfg job` shows the config a run will use, and the run saves exactly that config."""

import os
import subprocess
import sys

from omegaconf import OmegaConf

TINY = [
    "n_layer=2",
    "n_head=2",
    "n_embd=32",
    "block_size=32",
    "batch_size=4",
    "eval_iters=2",
    "sample_tokens=0",
    "eval_sample_tokens=0",
    "max_iters=6",
    "eval_interval=3",
    "warmup_iters=2",
    "device=cpu",
]


def gptlab_train(*args):
    return subprocess.run(
        [sys.executable, "-m", "gptlab.train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )


def test_saved_config_equals_what_cfg_job_shows(tmp_path, data_root):
    # an experiment on the CPU profile: the recipe, the experiment, its CPU scale and the command line compose
    args = [
        "experiment=exp4_lr_schedule",
        "profile=cpu",
        *TINY,
        f"data.root={data_root}",
        f"out_dir={tmp_path / 'run'}",
    ]
    shown = gptlab_train("--cfg", "job", "--resolve", *args)
    assert shown.returncode == 0, shown.stderr
    ran = gptlab_train(*args)
    assert ran.returncode == 0, ran.stderr[-2000:]
    saved = OmegaConf.to_container(OmegaConf.load(tmp_path / "run" / "config.yaml"))
    assert saved == OmegaConf.to_container(OmegaConf.create(shown.stdout))
    assert saved["max_iters"] == 6 and saved["n_layer"] == 2 and saved["eval_interval"] == 3
