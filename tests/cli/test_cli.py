"""The command line as a user types it: subprocesses, exit codes and what they leave on disk."""

import re

import pytest
import torch


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny, run_cli):
    out = tmp_path_factory.mktemp("cli") / "exp1_large_lr"
    # nanoGPT's spelling of the same overrides
    p = run_cli(
        "gptlab.train",
        "config/train_shakespeare_char.py",
        "--max_iters=30",
        "--eval_interval=15",
        "--learning_rate=5e-3",
        f"--out_dir={out}",
        *tiny,
        "sample_tokens=40",
    )
    return p, out


def test_train_from_the_command_line(cli_run):
    p, out = cli_run
    assert p.returncode == 0, p.stderr[-3000:]
    log = (out / "training.log").read_text().splitlines()
    assert [re.match(r"step (\d+):", line).group(1) for line in log] == ["0", "15", "30"]
    for name in ("best.ckpt", "last.ckpt", "metrics.json", "config.yaml", "console.log"):
        assert (out / name).is_file(), name
    assert "sample:" in p.stdout + p.stderr  # the sample printed at the end
    assert re.search(r"checkpoints: last.ckpt [\d.]+ MB, best.ckpt [\d.]+ MB", p.stdout + p.stderr)  # sizes reported
    assert "learning_rate: 0.005" in (out / "config.yaml").read_text()


def test_sample_from_a_run(cli_run, run_cli, tmp_path):
    _, out = cli_run
    p = run_cli(
        "gptlab.sample", f"ckpt={out}", "start=To be", "num_samples=2", "max_new_tokens=30", "seed=1", "device=cpu"
    )
    assert p.returncode == 0, p.stderr[-3000:]
    samples = p.stdout.split("---------------\n")
    assert len([s for s in samples if s.strip()]) == 2
    assert all(s.startswith("To be") for s in samples if s.strip())
    assert all(len(s.rstrip("\n")) == len("To be") + 30 for s in samples if s.strip())
    again = run_cli(
        "gptlab.sample", f"ckpt={out}", "start=To be", "num_samples=2", "max_new_tokens=30", "seed=1", "device=cpu"
    )
    assert again.stdout == p.stdout  # seeded
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\n")
    p = run_cli(
        "gptlab.sample", f"ckpt={out / 'last.ckpt'}", f"start=FILE:{prompt}", "num_samples=1", "max_new_tokens=5"
    )
    assert p.returncode == 0 and p.stdout.startswith("ROMEO:\n")


def test_multirun_gives_one_folder_per_job(tiny, run_cli, tmp_path):
    p = run_cli(
        "gptlab.train",
        "-m",
        "learning_rate=1e-3,5e-3",
        "max_iters=4",
        "eval_interval=2",
        f"out_dir={tmp_path / 'sweep'}",
        *tiny,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d.name for d in (tmp_path / "sweep").iterdir() if d.is_dir() and not d.name.startswith("."))
    assert runs == ["0_learning_rate=0.001", "1_learning_rate=0.005"]  # named after the swept key only
    for r in runs:
        assert (tmp_path / "sweep" / r / "training.log").read_text().count("val loss") == 3
        assert (tmp_path / "sweep" / r / "best.ckpt").is_file()


GPU_VISIBLE = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: device=cuda is no mistake here")
BAD = [
    (["lerning_rate=1e-3"], "unknown config key 'lerning_rate'. Did you mean 'learning_rate'"),
    (["n_embd=100", "n_head=3"], "must be divisible by n_head"),
    (["data=text", "data.path=/no/such/file.txt"], "does not exist"),
    pytest.param(["device=cuda"], "no CUDA GPU is visible", marks=GPU_VISIBLE),
    (["block_size=200000"], "not shorter than the val split"),
    (["warmup_iters=50", "max_iters=10"], "warmup_iters \\(50\\) > max_iters"),
]
BAD_IDS = [(b.values if hasattr(b, "values") else b)[1][:30] for b in BAD]


@pytest.mark.parametrize("args, message", BAD, ids=BAD_IDS)
def test_bad_input_gives_one_clear_line(tiny, run_cli, tmp_path, args, message):
    out = tmp_path / "run"
    p = run_cli("gptlab.train", "max_iters=10", f"out_dir={out}", *tiny, *args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), p.stderr[-2000:]
    assert not (out / "training.log").exists() and not (out / "best.ckpt").exists()


def test_empty_and_non_utf8_text(tiny, run_cli, tmp_path):
    for content, message in [(b"", "is empty"), (b"\xff\xfe caf\xe9", "not valid UTF-8")]:
        f = tmp_path / "my.txt"
        f.write_bytes(content)
        p = run_cli("gptlab.train", "data=text", f"data.path={f}", f"out_dir={tmp_path / 'run'}", *tiny)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_corrupt_checkpoint_is_refused(cli_run, run_cli, tmp_path):
    _, out = cli_run
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((out / "last.ckpt").read_bytes()[:5000])
    p = run_cli("gptlab.sample", f"ckpt={broken}", "max_new_tokens=5")
    assert p.returncode == 2 and "truncated or corrupt" in p.stderr and "Traceback" not in p.stderr


def test_prepare_a_users_text(run_cli, tmp_path):
    f = tmp_path / "poem.txt"
    f.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    p = run_cli("gptlab.prepare", "data=text", f"data.path={f}", f"data.root={tmp_path}")
    assert p.returncode == 0, p.stderr
    (folder,) = tmp_path.glob("text_poem_*_char")  # the path's hash in the name keeps two poem.txt apart
    assert (folder / "train.bin").is_file()
    assert "vocab 28" in p.stdout
