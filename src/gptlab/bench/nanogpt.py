"""nanoGPT's own train.py as a side of the bench: `python -m gptlab.bench --nanogpt DIR`, and the
whole-command comparison `python -m gptlab.bench --whole --nanogpt DIR`.

nanoGPT is run as it is, never imported or changed: train.py in a process of its own, with the
bench's config spelt as its `--key=value` arguments, in a folder laid out as it expects (this module
owns that layout: configurator.py, data/<dataset>/{train,val}.bin and meta.pkl). For turns, the bench
reads its progress lines and pauses it with SIGSTOP at the end of each chunk, SIGCONT for the next.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from gptlab.cli import common as cli
from gptlab.config import data_spec, resolve_device
from gptlab.data.dataset import ensure_prepared, load_meta
from gptlab.errors import ConfigError
from gptlab.model import SWITCH_DEFAULTS
from gptlab.rundir import read_metrics

REQUIRED = ("train.py", "model.py", "configurator.py")

# gptlab key -> the type of nanoGPT's default: its configurator refuses a value of another type
# (`--grad_clip=1` for its float 1.0), so every value is written as that type
FLAGS = {
    "n_layer": int,
    "n_head": int,
    "n_embd": int,
    "block_size": int,
    "batch_size": int,
    "gradient_accumulation_steps": int,
    "learning_rate": float,
    "min_lr": float,
    "warmup_iters": int,
    "lr_decay_iters": int,
    "decay_lr": bool,
    "max_iters": int,
    "beta1": float,
    "beta2": float,
    "weight_decay": float,
    "grad_clip": float,
    "dropout": float,
    "bias": bool,
    "eval_interval": int,
    "eval_iters": int,
    "log_interval": int,
    "always_save_checkpoint": bool,
    "compile": bool,
}

# settings gptlab has and nanoGPT's train.py has not: a run with another value cannot be compared
GPT2_ONLY = {
    "init_from": "scratch",
    "optimizer": "adamw",
    # the model's switches at their GPT-2 defaults (rope_base only matters with pos_emb=rope)
    **{k: v for k, v in SWITCH_DEFAULTS.items() if k != "rope_base"},
    "eval_batch_size": None,
    "data.batching": "random",
    "augment.mask_prob": 0.0,
}

ITER = re.compile(r"^iter (\d+): loss (\S+), time ([\d.]+)ms")
EVAL = re.compile(r"^step (\d+): train loss (\S+), val loss (\S+)")


def check_dir(home: str | Path) -> Path:
    """DIR as a nanoGPT checkout, or one line naming what is missing."""
    home = Path(home).expanduser()
    missing = [f for f in REQUIRED if not (home / f).is_file()]
    if missing:
        raise ConfigError(
            f"--nanogpt {home}: no {', '.join(missing)} there; give the folder of a nanoGPT checkout "
            "(the one with train.py, model.py and configurator.py)"
        )
    return home.resolve()


def check_expressible(cfg) -> None:
    for key, want in GPT2_ONLY.items():
        have = OmegaConf.select(cfg, key)
        if have != want:
            raise ConfigError(f"nanoGPT's train.py has no {key}={have}; leave {key} at {want} to compare with it")


def _literal(value, kind) -> str:
    # its configurator reads values with ast.literal_eval and falls back to the text as a string
    return repr(kind(value)) if kind in (int, float, bool) else str(value)


def flags(cfg, **changes) -> list[str]:
    """train.py's arguments for cfg (changes override cfg's values)."""
    choice = resolve_device(cfg)
    device = "cpu" if choice.on_cpu else (str(cfg.device) if str(cfg.device).startswith("cuda") else choice.accelerator)
    if device == "gpu":
        device = "cuda"
    values = {k: cfg[k] for k in FLAGS} | changes
    # its cosine divides by lr_decay_iters - warmup_iters, zero when a short run's warm-up fills it: one more
    # step of decay changes the rate of one step at most
    values["lr_decay_iters"] = max(int(values["lr_decay_iters"]), int(values["warmup_iters"]) + 1)
    args = [f"--{k}={_literal(values[k], FLAGS[k])}" for k in FLAGS]
    fixed = {
        "dataset": data_spec(cfg).name,
        "device": device,
        "dtype": choice.dtype,
        "init_from": "scratch",
        "out_dir": "out",  # relative to the run's own folder
        "wandb_log": False,
        "eval_only": False,
    }
    return args + [f"--{k}={v}" for k, v in fixed.items()]


def workdir(cfg, d: Path, home: Path) -> Path:
    """d laid out as train.py expects relative to its working directory, from gptlab's prepared data."""
    spec = data_spec(cfg)
    meta = load_meta(spec.dir)
    if meta["dtype"] != "uint16":
        raise ConfigError(f"nanoGPT's train.py reads uint16 tokens; {spec.dir} holds {meta['dtype']}")
    data = d / "data" / spec.name
    data.mkdir(parents=True)
    os.symlink(home / "configurator.py", d / "configurator.py")
    for split in ("train.bin", "val.bin"):  # gptlab's token files are nanoGPT's: raw uint16, no header
        os.symlink((spec.dir / split).resolve(), data / split)
    vocab = int(meta["vocab_size"])
    if cfg.get("pad_vocab"):
        vocab = 64 * math.ceil(vocab / 64)  # the same padded tables as gptlab's model
    if meta["tokenizer"] == "char":
        chars = meta["chars"]
        nano = {"vocab_size": vocab, "stoi": {c: i for i, c in enumerate(chars)}, "itos": dict(enumerate(chars))}
    elif vocab == 50304:
        nano = None  # no meta.pkl: its default vocabulary, and its sample.py then uses GPT-2's BPE
    else:
        nano = {"vocab_size": vocab}  # train.py reads only this (its sample.py would want stoi/itos)
    if nano is not None:
        with open(data / "meta.pkl", "wb") as f:
            pickle.dump(nano, f)
    return d


def _env(threads: int | None) -> dict:
    env = os.environ.copy() | {"PYTHONUNBUFFERED": "1"}  # each line arrives as it is printed
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _reap(p: subprocess.Popen) -> float:
    """Waits for p; its own peak RSS in MB (RUSAGE_CHILDREN would add up every child so far)."""
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024  # Linux: kB


def _cpu_s(pid: int) -> float | None:
    """The process's user + system CPU seconds so far, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:])


def _failed(p: subprocess.Popen, log: Path) -> SystemExit:
    return SystemExit(f"error: the nanoGPT run failed (exit {p.returncode}); the end of its output:\n{_tail(log)}")


# --------------------------------------------------------------------------- turns


class NanoRun:
    """nanoGPT's train.py as one side of a round (the interface of bench.PipeRun: start, turn,
    finish, result, close).

    It prints `iter N: loss L, time T ms` after iteration N (0-based, so N + 1 optimizer steps done)
    when N is a multiple of log_interval; with log_interval = chunk, the chunk ends at those lines.
    Its warm-up is therefore the first count >= the bench's warm-up that is 1 more than a multiple
    of chunk (at most chunk - 1 steps longer). A chunk is timed on the bench's side from SIGCONT to
    the arrival of the line that ends it, then SIGSTOP: that includes the pipe's latency and this
    process's wake-up; the few instructions the child runs between printing and the SIGSTOP landing
    fall into no chunk (well under a millisecond against a chunk's hundreds)."""

    def __init__(self, home: Path, cfg, d: Path, warmup: int, steps: int, chunk: int, threads: int | None):
        self.first = warmup + (1 - warmup) % chunk
        self.marks = [self.first - 1 + k * chunk for k in range(steps // chunk + 1)]  # iteration numbers
        self.steps, self.chunk, self.threads = steps, chunk, threads
        self.cfg, self.d, self.home = cfg, d, home
        self.log = d / "console.log"
        self.p: subprocess.Popen | None = None
        self.out = None  # its console.log: every line it printed
        self.chunk_s: list[float] = []
        self.turns: list[tuple[float, float]] = []
        self.cpu_s: float | None = 0.0
        self.own_ms: list[float] = []  # its printed per-iteration times inside the timed window
        self.losses: dict[int, float] = {}
        self.evals: list[tuple[int, float]] = []
        self.pauses: dict[int, float] = {}  # iteration -> seconds it spent stopped
        self.peak_rss_mb = 0.0

    def _flags(self) -> list[str]:
        cfg, end = self.cfg, self.first + self.steps
        # evaluations where the bench's window has them; with none inside (intervals=none) only at
        # the top of iteration `end`, after the window, as the other sides' final evaluation
        interval = int(cfg.eval_interval) if int(cfg.eval_interval) < int(cfg.max_iters) else end
        return flags(cfg, max_iters=end, log_interval=self.chunk, eval_interval=interval)

    def start(self) -> None:
        workdir(self.cfg, self.d, self.home)
        cmd = [sys.executable, str(self.home / "train.py"), *self._flags()]
        self.out = open(self.log, "w")
        self.p = subprocess.Popen(
            cmd,
            cwd=self.d,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(self.threads),
        )
        self._read_to(self.marks[0])  # start-up and warm-up alone
        self._stop()

    def turn(self) -> None:
        k = len(self.chunk_s)
        cpu = _cpu_s(self.p.pid)
        t, wall = time.perf_counter(), time.time()
        self.pauses[self.marks[k] + 1] = t - self._stopped_at
        os.kill(self.p.pid, signal.SIGCONT)
        self._read_to(self.marks[k + 1])
        self.chunk_s.append(time.perf_counter() - t)
        self.turns.append((wall, time.time()))
        self._stop()
        after = _cpu_s(self.p.pid)
        if self.cpu_s is not None:  # stays None once a reading failed
            self.cpu_s = None if None in (cpu, after) else self.cpu_s + after - cpu

    def finish(self) -> None:
        os.kill(self.p.pid, signal.SIGCONT)  # the rest of its run: an evaluation and one step
        self._read_to(None)
        self.peak_rss_mb = _reap(self.p)

    def _stop(self) -> None:
        os.kill(self.p.pid, signal.SIGSTOP)
        self._stopped_at = time.perf_counter()

    def _read_to(self, iteration: int | None) -> None:
        """Reads its output up to the line of `iteration` (None: to the end)."""
        for line in self.p.stdout:
            self.out.write(line)
            if m := EVAL.match(line):
                self.evals.append((int(m[1]), float(m[3])))
            if m := ITER.match(line):
                n = int(m[1])
                self.losses[n] = float(m[2])
                if self.marks[0] < n <= self.marks[-1]:
                    # its clock ran on while it was stopped: the stop falls in the iteration after a mark
                    self.own_ms.append(float(m[3]) - 1000 * self.pauses.get(n, 0.0))
                if n == iteration:
                    self.out.flush()
                    return
        self.out.flush()
        if iteration is not None:  # it ended before the line
            _reap(self.p)
            raise _failed(self.p, self.log)

    def close(self) -> None:
        if self.p is not None and self.p.returncode is None:
            self.p.kill()  # SIGKILL ends a stopped process too
            _reap(self.p)
        if self.p is not None:
            self.p.stdout.close()
        if self.out is not None:
            self.out.close()

    def result(self) -> dict:
        if self.p.returncode != 0:
            raise _failed(self.p, self.log)
        c = self.cfg
        seconds = sum(self.chunk_s)
        tokens = int(c.batch_size) * int(c.block_size) * int(c.gradient_accumulation_steps) * self.steps
        return {
            "ms_per_step": 1000 * seconds / self.steps,
            "cpu_ms_per_step": None if self.cpu_s is None else 1000 * self.cpu_s / self.steps,
            "own_ms_per_step": statistics.median(self.own_ms),
            "chunk_ms_per_step": [1000 * s / self.chunk for s in self.chunk_s],
            "turns": self.turns,
            "tokens_per_s": tokens / seconds,
            "loss_at_end": self.losses[self.marks[-1]],
            "final_val_loss": self.evals[-1][1] if self.evals else None,
            "final_eval_step": self.evals[-1][0] if self.evals else None,
            "first_timed_step": self.first + 1,
            "peak_rss_mb": self.peak_rss_mb,
            "cuda_peak_mb": None,  # inside its process: not measurable from here
            "flops_per_token": None,  # the bench fills in gptlab's count for the same model
        }


def check_turns(steps: int, chunk: int) -> None:
    if chunk == 0:
        raise ConfigError("--nanogpt takes turns; --chunk 0 (whole runs) is what --whole compares")
    if steps % chunk:
        raise ConfigError(
            f"--nanogpt ends its turns at its progress lines, every --chunk steps: "
            f"give timed steps ({steps}) that --chunk ({chunk}) divides"
        )


# --------------------------------------------------------------------------- whole commands


def _timed(cmd: list[str], cwd: Path, log: Path, threads: int | None) -> tuple[float, float, int]:
    """Runs cmd to its end: (wall seconds from start to exit, peak RSS in MB, exit status)."""
    with open(log, "w") as f:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=_env(threads))
        rss = _reap(p)
        return time.perf_counter() - t, rss, p.returncode


def _last_val_loss(log: Path) -> float | None:
    found = [float(m[3]) for line in log.read_text(errors="replace").splitlines() if (m := EVAL.match(line))]
    return found[-1] if found else None


def _pair_line(g: dict, n: dict) -> str:
    def loss(x):
        return "none" if x is None else f"{x:.4f}"

    return (
        f"gptlab {g['wall_s']:.1f} s, nanoGPT {n['wall_s']:.1f} s, ratio {g['wall_s'] / n['wall_s']:.3f}; "
        f"final val loss gptlab {loss(g['final_val_loss'])}, nanoGPT {loss(n['final_val_loss'])}; "
        f"peak RSS {g['peak_rss_mb']:.0f} / {n['peak_rss_mb']:.0f} MB"
    )


def whole(home: Path, overrides: list[str], rounds: int, work: Path, threads: int | None = None) -> dict:
    """`python -m gptlab.train profile=cpu [overrides]` against nanoGPT's train.py with the same
    settings, each command start to finish, pairs alternating which goes first. A profile=... among
    the overrides replaces the CPU recipe (profile=none: the default run, the baby GPT on a GPU)."""
    if not any(o.startswith("profile=") for o in overrides):
        overrides = ["profile=cpu", *overrides]
    cfg = cli.compose("train", overrides)
    check_expressible(cfg)
    ensure_prepared(data_spec(cfg), log=print)
    nano_flags = flags(cfg)
    print(
        f"\n== whole commands ({' '.join(overrides)}: {cfg.n_layer}/{cfg.n_head}/{cfg.n_embd}, block {cfg.block_size}, "
        f"batch {cfg.batch_size}, {cfg.max_iters} steps, eval every {cfg.eval_interval} x {cfg.eval_iters}), "
        f"{rounds} pairs, the first alternating\n   nanoGPT: train.py {' '.join(nano_flags)}"
    )
    pairs = []
    for r in range(rounds):
        g_dir, n_dir = work / f"whole_gptlab_{r}", work / f"whole_nanogpt_{r}"
        g_cmd = [sys.executable, "-m", "gptlab.train", *overrides, f"out_dir={g_dir}"]
        n_cmd = [sys.executable, str(home / "train.py"), *nano_flags]
        workdir(cfg, n_dir, home)
        work_g = {"cmd": g_cmd, "cwd": Path.cwd(), "log": work / f"whole_gptlab_{r}.log"}
        work_n = {"cmd": n_cmd, "cwd": n_dir, "log": n_dir / "console.log"}
        order = [("gptlab", work_g), ("nanoGPT", work_n)]
        res = {}
        for name, job in order if r % 2 == 0 else order[::-1]:
            wall, rss, rc = _timed(job["cmd"], job["cwd"], job["log"], threads)
            if rc != 0:
                raise SystemExit(
                    f"error: the whole {name} run failed (exit {rc}); the end of its output:\n{_tail(job['log'])}"
                )
            res[name] = {"wall_s": wall, "peak_rss_mb": rss}
        res["gptlab"]["final_val_loss"] = (read_metrics(g_dir) or {}).get("final_val_loss")
        res["nanoGPT"]["final_val_loss"] = _last_val_loss(work_n["log"])
        res["first"] = "gptlab" if r % 2 == 0 else "nanoGPT"
        pairs.append(res)
        print(f"   pair {r + 1} ({res['first']} first): {_pair_line(res['gptlab'], res['nanoGPT'])}", flush=True)
    ratios = [p["gptlab"]["wall_s"] / p["nanoGPT"]["wall_s"] for p in pairs]
    print(
        f"   wall-time ratio gptlab / nanoGPT: min {min(ratios):.3f} median {statistics.median(ratios):.3f} "
        f"max {max(ratios):.3f}"
    )
    return {"max_iters": int(cfg.max_iters), "nanogpt_args": nano_flags, "pairs": pairs, "wall_ratio": ratios}
