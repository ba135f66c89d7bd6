"""The user's mistakes at the entry points: one `error: ...` (or `stopped: ...`) line, the
documented exit status, no traceback -- and a bug still shows its traceback. In process where
possible (an entry point's main with argv), in a subprocess for signals."""

import errno
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from gptlab.cli import common as cli
from gptlab.cli import prepare, sample
from gptlab.cli import train as train_cli
from gptlab.errors import CheckpointError, ConfigError, NonFiniteLossError
from gptlab.training.callbacks.logs import NonFiniteGuard
from gptlab.training.checkpoint import load_checkpoint
from gptlab.training.run import train


def run_main(main, argv, capsys):
    """(exit status, stderr) of an entry point's main called with argv."""
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, err


def one_line(err: str, label: str = "error") -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"{label}:")]
    assert len(lines) == 1, err
    return lines[0]


PROMPT = "What [is] # this é, {a: b} ${x} it's"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, compose):
    """A two-step run on a text whose characters include the prompt's: [ ] # { } $ é '."""
    root = tmp_path_factory.mktemp("tiny")
    text = root / "text.txt"
    text.write_text(f"{PROMPT} To be, or not to be.\n" * 100, encoding="utf-8")
    overrides = ["data=text", f"data.path={text}", f"data.root={root / 'data'}", "max_iters=2", "eval_interval=2"]
    train(compose(*overrides), root / "run")
    return root / "run"


# --------------------------------------------------------------- group choices and keys


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["experiment=exp3_regularisation"],
            "unknown experiment 'exp3_regularisation'. Did you mean 'exp3_regularization'? The experiments: exp1_",
        ),
        (
            ["-m", "variant=large_lr,larg_batch"],
            "unknown variant 'larg_batch'. Did you mean 'large_batch'? The variants: ",
        ),
        (["-m", "variant=choice(tiny,smal)"], "unknown variant 'smal'. Did you mean 'small'?"),
        (["model=babby"], "unknown model 'babby'. Did you mean 'baby'?"),
        (["data=shakespeare_chr"], "unknown data config 'shakespeare_chr'. Did you mean 'shakespeare_char'?"),
        (["trainer=dpp"], "unknown trainer 'dpp'. Did you mean 'ddp'?"),
        (["profile=gpus"], "unknown profile 'gpus'. Did you mean 'gpu'?"),
        (["hydra/launcher=slrum"], "unknown launcher 'slrum'. Did you mean 'slurm'?"),
        (["logger=[tensorboard,csvv]"], "unknown logger 'csvv'. Did you mean 'csv'? The loggers: csv, mlflow,"),
        (
            ["logger.tensorbord.name=x"],
            "unknown config key 'logger.tensorbord.name'. Did you mean 'logger.tensorboard'?",
        ),
        (["+misspelt_key=1"], "unknown config key 'misspelt_key'"),
        (["+lerning_rate=1"], "unknown config key 'lerning_rate'. Did you mean 'learning_rate'?"),
        (["++lerning_rate=1"], "unknown config key 'lerning_rate'. Did you mean 'learning_rate'?"),
        (["+trainers.max_epochs=1"], "unknown config key 'trainers.max_epochs'"),
        (["~lerning_rate"], "unknown config key 'lerning_rate'"),
        (["a=[b"], "cannot read 'a=[b': "),
    ],
)
def test_unknown_names_are_refused_before_composing(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cli.check_override_keys(args)


def test_names_that_exist_pass():
    cli.check_override_keys(
        ["data=exp3_regularization/cpu", "experiment=null", "~variant", "hydra/launcher=joblib", "--cfg", "job"]
    )
    cli.check_override_keys(["-m", "variant=glob(large*)", "experiment=exp1_hparams", "+lr_find.min_lr=1e-5"])
    # open nodes: Lightning Trainer arguments (checked against its signature when training starts), callbacks
    cli.check_override_keys(["+trainer.max_time=00:01:00:00", "+callbacks.swa._target_=a.B", "+callbacks.swa.x=1"])
    cli.check_override_keys(
        ["logger=[tensorboard,csv]", "logger=[]", "+logger.wandb.tags=[a,b]", "-m", "logger=csv,wandb"]
    )


def test_a_misspelt_experiment_never_runs_the_default_job(tmp_path, capsys):
    code, err = run_main(train_cli.main, ["experiment=exp3_regularisation", f"out_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "Did you mean 'exp3_regularization'" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_a_wrong_value_leaves_no_run_folder(tmp_path, capsys):
    code, err = run_main(train_cli.main, ["learning_rate=abc", "device=cpu", f"out_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "learning_rate must be > 0, or auto" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_hydras_own_errors_are_one_line(tmp_path, capsys):
    code, err = run_main(train_cli.main, ["n_layer.deep=1", f"out_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "n_layer.deep" in one_line(err)


# --------------------------------------------------------------- sample


@pytest.mark.parametrize(
    "arg, message",
    [
        ("num_samples=0", "num_samples must be an integer >= 1, got 0"),
        ("max_new_tokens=-5", "max_new_tokens must be an integer >= 1, got -5"),
        ("top_k=-1", "top_k must be an integer >= 1, or null"),
        ("temperature=0", r"temperature must be > 0 .*got 0"),
        ("temperature=-1", r"temperature must be > 0 .*got -1"),
        ("dtype=fp8", "dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
        ("device=tpu", "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        ("num_smaples=2", "unknown config key 'num_smaples'. Did you mean 'num_samples'?"),
    ],
)
def test_sample_settings_are_checked(tiny_run, capsys, arg, message):
    code, err = run_main(sample.main, [f"ckpt={tiny_run}", arg], capsys)
    assert code == 2 and re.search(message, one_line(err))


def test_a_prompt_with_hydra_syntax_and_non_ascii_reaches_the_model(tiny_run, capsys):
    assert cli.compose("sample", cli.translate_argv(["ckpt=x", f"start={PROMPT}"])).start == PROMPT
    code, _ = run_main(
        sample.main, [f"ckpt={tiny_run}", f"start={PROMPT}", "max_new_tokens=3", "num_samples=1"], capsys
    )
    assert code == 0
    with pytest.raises(SystemExit) as e:
        sample.main([f"ckpt={tiny_run}", "start=What [is] # this é", "max_new_tokens=3", "num_samples=1"])
        raise SystemExit(0)
    assert e.value.code == 0 and capsys.readouterr().out.startswith("What [is] # this é")


# --------------------------------------------------------------- misleading messages


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "notes.ckpt"
    f.write_text("hello, these are my notes\n")
    with pytest.raises(CheckpointError, match="is a text file, not a checkpoint") as e:
        load_checkpoint(f)
    assert "could run code" not in str(e.value) and "corrupt" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_good_checkpoint_for_a_missing_device_is_not_called_corrupt(tiny_run):
    with pytest.raises(CheckpointError, match="device this machine does not have.*device=cpu") as e:
        load_checkpoint(tiny_run / "last.ckpt", map_location="cuda")
    assert "corrupt" not in str(e.value)


def nan_stop(tmp_path):
    guard = NonFiniteGuard(check_interval=1, learning_rate=1e-3, dtype="float32")
    guard._note("loss", torch.tensor(float("nan")), 3)
    with pytest.raises(NonFiniteLossError) as e:
        guard.check(SimpleNamespace(default_root_dir=str(tmp_path)))
    return str(e.value)


def test_the_nan_stop_names_only_checkpoints_that_exist(tmp_path):
    assert "best.ckpt" not in nan_stop(tmp_path) and "none had been written" in nan_stop(tmp_path)
    (tmp_path / "best.ckpt").write_bytes(b"x")
    message = nan_stop(tmp_path)
    assert "(best.ckpt holds the last good weights)" in message and "last.ckpt" not in message


# --------------------------------------------------------------- the boundary


@pytest.mark.parametrize(
    "code, message",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "no permission"),
    ],
)
def test_the_machines_oserrors_are_one_line(capsys, code, message):
    @cli.report_errors
    def entry():
        raise OSError(code, os.strerror(code), "/runs/x/last.ckpt")

    with pytest.raises(SystemExit) as e:
        entry()
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in one_line(err) and "/runs/x/last.ckpt" in err


def test_a_bug_keeps_its_traceback():
    @cli.report_errors
    def entry():
        raise OSError(errno.ENOENT, "No such file or directory", "/internal/file")

    with pytest.raises(FileNotFoundError):
        entry()
    with pytest.raises(ZeroDivisionError):
        cli.report_errors(lambda: 1 / 0)()


def test_out_dir_or_data_root_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    code, err = run_main(prepare.main, [f"data.root={f}"], capsys)
    assert code == 2 and "a file is in the way" in one_line(err)
    assert f.read_text() == "mine\n"


def test_ctrl_c_at_the_boundary(capsys):
    before = signal.getsignal(signal.SIGINT)

    def entry():
        raise KeyboardInterrupt

    try:
        with pytest.raises(SystemExit) as e:
            cli.report_errors(entry)()
        assert e.value.code == 130 and one_line(capsys.readouterr().err, "stopped")
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a third Ctrl-C cannot break the exit
    finally:
        signal.signal(signal.SIGINT, before)


def test_two_quick_ctrl_cs_during_training_stop_with_one_line(tiny, tmp_path):
    run = tmp_path / "run"
    args = [*tiny, "max_iters=100000", "eval_interval=50", f"out_dir={run}"]
    p = subprocess.Popen(
        [sys.executable, "-m", "gptlab.train", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not ((run / "training.log").is_file() and "step 0" in (run / "training.log").read_text()):
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(0.5)  # inside the training steps
    p.send_signal(signal.SIGINT)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert re.search(r"^stopped: .*SIGINT", err, re.M), err[-3000:]
