"""Side-by-side benchmark: `python -m gptlab.bench [--configs cpu,baby] [key=value ...]`.

Times the same model, batches, optimizer and schedule (a) through gptlab's training path
(``gptlab.training.run.train``: GPTModule, GPTDataModule, the Trainer and callbacks run.py builds)
and (b) through the hand-written loop in ``gptlab.bench.plain_loop``. Each run is a subprocess of
its own, so start-up and peak resident memory belong to one side. In each round the two processes
take turns of a few optimizer steps (A, B, B, A, ...), so that a spell of load from elsewhere on a
shared machine slows both sides alike; the ratio A / B is reported per round as min / median /
max. Also reports tokenizer speed on Tiny Shakespeare (MB/s). ``--costs`` measures the single
optimisations instead (gptlab.bench.costs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptlab.bench import nanogpt
from gptlab.bench.nanogpt import NanoRun
from gptlab.bench.plain_loop import train_plain
from gptlab.cli import common as cli
from gptlab.config import data_spec, model_config, resolve_device
from gptlab.data.dataset import ensure_prepared, fetch_corpus, load_meta, read_text
from gptlab.data.tokenizer import CharTokenizer, TiktokenTokenizer
from gptlab.errors import ConfigError
from gptlab.model import GPT
from gptlab.training.flops import measured_matmul_peak, peak_flops


@dataclass
class Preset:
    about: str
    overrides: list[str]
    cpu_steps: tuple[int, int] | None  # (warm-up, timed) optimizer steps on a CPU; None: GPU only
    gpu_steps: tuple[int, int]


def _cpu_recipe() -> list[str]:
    # profile=cpu's model and recipe (conf/model/cpu.yaml, conf/recipe/cpu.yaml): the run `make train`
    # does without a GPU, spelt out so that both sides compose it the same way (max_iters comes from the bench)
    recipe = OmegaConf.load(cli.CONF_DIR / "recipe" / "cpu.yaml")
    return ["model=cpu", *(f"{k}={v}" for k, v in recipe.items() if k != "max_iters")]


PRESETS = {
    # timed steps: a multiple of eval_interval (250), so evaluations take their usual share of the window
    "cpu": Preset("the CPU recipe 4/4/128, block 64, batch 12", _cpu_recipe(), (50, 500), (50, 500)),
    "baby": Preset(
        "the baby GPT 6/6/384, block 256, batch 64",
        ["model=baby", "block_size=256", "batch_size=64"],
        (1, 3),
        (50, 250),
    ),
    "gpt2": Preset(
        "GPT-2 124M, block 1024, batch 16 x 4 accumulation, bf16, compiled, vocab padded to 50,304",
        [
            "model=gpt2",
            "data=shakespeare",
            "batch_size=16",
            "gradient_accumulation_steps=4",
            "dtype=bfloat16",
            "compile=true",
            "pad_vocab=true",
        ],
        None,
        (10, 40),
    ),
}

# --------------------------------------------------------------------------- one side, one process


class Turns:
    """The child's end of the turn-taking with the bench: a byte on `done` says "my chunk is
    over" (or "I reached the timed steps"), a byte on `go` says "your turn"."""

    def __init__(self, go_fd: int, done_fd: int):
        self.go_fd, self.done_fd = go_fd, done_fd

    def done(self) -> None:
        os.write(self.done_fd, b".")

    def wait(self) -> None:
        if not os.read(self.go_fd, 1):
            raise SystemExit("the bench that started this run has gone")


class StepTimer:
    """Wall and CPU time of the timed optimizer steps, `warmup + 1 ... warmup + steps`, measured
    between marks at the end of optimizer steps (before any evaluation due at that step: an
    evaluation belongs to the chunk after its mark, on both sides alike).

    With `turns`, the steps are timed in chunks of `chunk` steps and the process hands over to the
    other side at each chunk's end: the bench runs the two sides turn about, A, B, B, A, ..., so a
    spell of load on a shared machine falls on both sides instead of one."""

    def __init__(self, warmup: int, steps: int, cuda: bool, chunk: int | None = None, turns: Turns | None = None):
        self.warmup, self.steps, self.cuda, self.turns = warmup, steps, cuda, turns
        chunk = min(chunk or steps, steps)
        self.marks = [*range(warmup, warmup + steps, chunk), warmup + steps]
        self.chunk_s: list[float] = []
        self.cpu_s = 0.0  # process CPU time: both threads' work, steadier than wall time alone
        self._t = self._cpu = None
        self.waited_s = 0.0  # blocked while the other side ran
        self.turns_wall: list[
            tuple[float, float]
        ] = []  # (start, end) of each chunk, wall clock: comparable across processes
        self.loss = None

    def mark(self, step: int, loss: torch.Tensor) -> None:
        if step not in self.marks:
            return
        if self.cuda:
            torch.cuda.synchronize()  # queued kernels belong to the steps before the mark
        if self._t is not None:
            self.chunk_s.append(time.perf_counter() - self._t)
            self.cpu_s += time.process_time() - self._cpu
            self.turns_wall.append((self._wall, time.time()))
        last = step == self.marks[-1]
        if last:
            self.loss = float(loss.detach())
        if self.turns is not None:
            self.turns.done()
            t = time.perf_counter()
            self.turns.wait()  # after the last chunk too: the run's ending must not overlap the other's steps
            self.waited_s += time.perf_counter() - t
        if not last:
            self._t, self._cpu, self._wall = time.perf_counter(), time.process_time(), time.time()

    @property
    def seconds(self) -> float:
        if len(self.chunk_s) != len(self.marks) - 1:
            raise RuntimeError("the run ended before the timed steps did")
        return sum(self.chunk_s)


def _run_gptlab(cfg, run_dir: Path, timer: StepTimer) -> dict:
    # only here: the parent and the plain side's process never import Lightning (start-up time and
    # resident memory are measured per side)
    import lightning as L

    from gptlab.training.callbacks.logs import EvalSamples
    from gptlab.training.run import train

    class Timer(L.Callback):  # local: needs Lightning, imported just above
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            accum = trainer.accumulate_grad_batches
            if (batch_idx + 1) % accum == 0:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                waited = timer.waited_s
                timer.mark(trainer.global_step, loss * accum)  # Lightning hands back loss / accumulation
                if timer.waited_s != waited:  # a turn ended: the eval samples' budget counts training time only
                    for cb in trainer.callbacks:
                        if isinstance(cb, EvalSamples):
                            cb.exclude(timer.waited_s - waited)

    cli.setup_console_logging()
    metrics = train(cfg, run_dir, callbacks=[Timer()])
    return {"final_val_loss": metrics["final_val_loss"], "flops_per_token": None}


def _run_plain(cfg, run_dir: Path, timer: StepTimer) -> dict:
    return train_plain(cfg, run_dir, on_step=timer.mark)


def child(
    side: str,
    cfg_path: Path,
    out_path: Path,
    warmup: int,
    steps: int,
    chunk: int | None = None,
    turns: Turns | None = None,
) -> None:
    """One timed run in this process; writes its figures to out_path as JSON."""
    cfg = OmegaConf.load(cfg_path)
    on_cuda = resolve_device(cfg).accelerator == "gpu"
    timer = StepTimer(warmup, steps, on_cuda, chunk, turns)
    t = time.perf_counter()
    run = _run_gptlab if side == "gptlab" else _run_plain
    res = run(cfg, cfg_path.parent / f"run_{side}", timer)
    tokens = int(cfg.batch_size) * int(cfg.block_size) * int(cfg.gradient_accumulation_steps) * steps
    res.update(
        ms_per_step=1000 * timer.seconds / steps,
        cpu_ms_per_step=1000 * timer.cpu_s / steps,
        chunk_ms_per_step=[1000 * t / (b - a) for t, a, b in zip(timer.chunk_s, timer.marks, timer.marks[1:])],
        turns=timer.turns_wall,
        tokens_per_s=tokens / timer.seconds,
        loss_at_end=timer.loss,
        wall_s=time.perf_counter() - t,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: kB
        cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
    )
    if res["flops_per_token"] is None:
        res["flops_per_token"] = _flops_per_token(cfg)
    out_path.write_text(json.dumps(res))


def _flops_per_token(cfg) -> float:
    with torch.device("meta"):  # counts parameters without allocating them
        return GPT(model_config(cfg, int(load_meta(data_spec(cfg).dir)["vocab_size"]))).flops_per_token()


# --------------------------------------------------------------------------- orchestration


@dataclass
class Side:
    name: str  # gptlab | plain | nanogpt
    overrides: list[str] = field(default_factory=list)
    nanogpt: Path | None = None  # nanogpt: the checkout whose train.py runs

    @property
    def label(self) -> str:
        return "nanoGPT" if self.nanogpt else " ".join([self.name, *self.overrides])


def parse_side(spec: str) -> Side:
    name, *overrides = spec.split()
    if name not in ("gptlab", "plain"):
        raise SystemExit(
            f"error: a side is 'gptlab' or 'plain', optionally followed by key=value overrides; got '{spec}'"
        )
    cli.check_override_keys(overrides)
    return Side(name, overrides)


def compose_run(preset: Preset, side: Side, extra: list[str], warmup: int, steps: int, intervals: str) -> OmegaConf:
    max_iters = warmup + steps
    cfg = cli.compose(
        "train",
        ["profile=none", "sample_tokens=0", *preset.overrides, *extra, *side.overrides, f"max_iters={max_iters}"],
    )
    cfg.warmup_iters = min(int(cfg.warmup_iters), max_iters)
    cfg.lr_decay_iters = max_iters
    if intervals == "none":
        cfg.eval_interval = cfg.log_interval = max_iters  # evaluate and log only when the run ends
    # evaluations outside the timed window only cost wall time: keep them to one batch
    if not any(s % int(cfg.eval_interval) == 0 for s in range(warmup, max_iters)):
        cfg.eval_iters = 1
    return cfg


def _marks_in_window(preset: Preset, extra: list[str], warmup: int, steps: int) -> bool:
    cfg = cli.compose("train", ["profile=none", *preset.overrides, *extra])
    window = range(warmup, warmup + steps)
    return any(s % int(cfg.eval_interval) == 0 or s % int(cfg.log_interval) == 0 for s in window)


def _start(
    side: Side, cfg, d: Path, warmup: int, steps: int, chunk: int, threads: int | None, pipes: tuple[int, int] | None
):
    d.mkdir(parents=True)
    OmegaConf.save(cfg, d / "config.yaml", resolve=True)
    cmd = [
        sys.executable,
        "-m",
        "gptlab.bench",
        "--child",
        side.name,
        str(d / "config.yaml"),
        str(d / "result.json"),
        str(warmup),
        str(steps),
        str(chunk),
    ]
    if pipes:
        cmd += [str(fd) for fd in pipes]
    env = os.environ.copy()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads
    with open(d / "console.log", "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, pass_fds=pipes or ())


def _failed(side: Side, p: subprocess.Popen, d: Path) -> SystemExit:
    tail = "\n".join((d / "console.log").read_text().splitlines()[-20:])
    return SystemExit(f"error: the {side.label} run failed (exit {p.returncode}); the end of its output:\n{tail}")


class PipeRun:
    """A gptlab or plain side in a `--child` process of its own; with chunk > 0 it hands turns
    over two pipes (the waiting one is blocked on a read, its CPU idle). nanogpt.NanoRun has the
    same methods: start (start-up and warm-up alone; chunk 0: the whole run), turn, finish."""

    def __init__(self, side: Side, cfg, d: Path, warmup: int, steps: int, chunk: int, threads: int | None):
        self.side, self.cfg, self.d, self.chunk = side, cfg, d, chunk
        self.args = (warmup, steps, chunk, threads)
        self.p: subprocess.Popen | None = None
        self.go = self.done = -1

    def start(self) -> None:
        warmup, steps, chunk, threads = self.args
        if not chunk:
            self.p = _start(self.side, self.cfg, self.d, warmup, steps, 0, threads, None)
            return
        g_r, self.go = os.pipe()  # bench -> child: "your turn"
        self.done, d_w = os.pipe()  # child -> bench: "my turn is over"
        self.p = _start(self.side, self.cfg, self.d, warmup, steps, chunk, threads, (g_r, d_w))
        os.close(g_r), os.close(d_w)  # the child's ends: a child that dies closes its pipe
        self._await()  # it waits at the first mark

    def turn(self) -> None:
        os.write(self.go, b".")
        self._await()

    def finish(self) -> None:
        if self.chunk:
            os.write(self.go, b".")  # the final evaluation and saving
        self.p.wait()

    def _await(self) -> None:
        if not os.read(self.done, 1):  # end of file: the child exited
            self.p.wait()
            raise _failed(self.side, self.p, self.d)

    def close(self) -> None:
        for fd in (self.go, self.done):
            if fd >= 0:
                os.close(fd)
        self.go = self.done = -1
        if self.p is not None and self.p.poll() is None:
            self.p.kill()

    def result(self) -> dict:
        if self.p.returncode != 0 or not (self.d / "result.json").is_file():
            raise _failed(self.side, self.p, self.d)
        return json.loads((self.d / "result.json").read_text())


def _run_of(side: Side, cfg, d: Path, warmup: int, steps: int, chunk: int, threads: int | None):
    if side.nanogpt is not None:
        return NanoRun(side.nanogpt, cfg, d, warmup, steps, chunk, threads)
    return PipeRun(side, cfg, d, warmup, steps, chunk, threads)


def run_round(
    sides: list[Side],
    cfgs: list,
    work: Path,
    warmup: int,
    steps: int,
    chunk: int,
    tag: str,
    threads: int | None = None,
    first: int = 0,
) -> list[dict]:
    """One run per side, each in a process of its own, side `first` starting first. chunk > 0:
    each starts and warms up alone, then they take turns of `chunk` timed optimizer steps in
    order and back (A B C, C B A, A B C, ...) and finish one after the other. chunk 0: one whole
    run after the other."""
    seq = [*range(first, len(sides)), *range(first)]
    runs = [
        _run_of(s, c, work / f"{tag}_{i}", warmup, steps, chunk, threads) for i, (s, c) in enumerate(zip(sides, cfgs))
    ]
    try:
        for i in seq:
            runs[i].start()
            if not chunk:
                runs[i].finish()
        if chunk:
            for k in range(-(-steps // chunk)):
                for i in seq if k % 2 == 0 else seq[::-1]:
                    runs[i].turn()
            for i in seq:  # the final evaluation and saving, one run at a time
                runs[i].finish()
    finally:
        for r in runs:
            r.close()
    return [r.result() for r in runs]


def _spread(xs: list[float]) -> str:
    return f"min {min(xs):.3f} median {statistics.median(xs):.3f} max {max(xs):.3f}"


def bench_preset(
    name: str,
    sides: list[Side],
    extra: list[str],
    rounds: int,
    steps: tuple[int, int] | None,
    intervals: str,
    peak: tuple[float, str],
    work: Path,
    threads: int | None = None,
    chunk: int | None = None,
) -> dict:
    preset = PRESETS[name]
    warmup, timed = steps
    cfgs = [compose_run(preset, s, extra, warmup, timed, intervals) for s in sides]
    for side, cfg in zip(sides, cfgs):
        if side.nanogpt:
            nanogpt.check_expressible(cfg)
    ensure_prepared(data_spec(cfgs[0]), log=print)
    _print_header(name, preset, cfgs[0], sides, steps, rounds, intervals, chunk)
    results: list[list[dict]] = [[] for _ in sides]
    for r in range(rounds):
        tag = f"{name}_{intervals}_r{r}"
        # the side that starts first rotates, so each starts first equally often over len(sides) rounds
        for i, res in enumerate(run_round(sides, cfgs, work, warmup, timed, chunk, tag, threads, first=r % len(sides))):
            if res["flops_per_token"] is None:
                res["flops_per_token"] = _flops_per_token(cfgs[i])  # nanoGPT's: the same model, counted here
            results[i].append(res)
            print(f"   round {r + 1} {_round_line(sides[i], res)}", flush=True)
    if peak[1].startswith("CPU"):
        # a matmul rate measured once can catch a busy moment on a shared machine: keep the best seen
        again = measured_matmul_peak("cpu", torch.float32, 1024)
        if again > peak[0]:
            peak = (again, peak[1])
            print(f"   MFU against {again / 1e12:.3f} TFLOP/s: a higher matmul rate measured after these runs")
    return {
        "preset": name,
        "intervals": intervals,
        "warmup": warmup,
        "steps": timed,
        "rounds": rounds,
        **_summary(sides, results, peak[0]),
        "runs": results,
    }


def _round_line(side: Side, res: dict) -> str:
    cpu = "-" if res["cpu_ms_per_step"] is None else f"{res['cpu_ms_per_step']:.1f}"
    own = f"; its own median {res['own_ms_per_step']:.1f} ms/step" if "own_ms_per_step" in res else ""
    return (
        f"{side.label:<28} {res['ms_per_step']:8.1f} ms/step ({cpu} CPU) {res['tokens_per_s']:10,.0f} tok/s "
        f"peak RSS {res['peak_rss_mb']:6.0f} MB  loss {res['loss_at_end']:.4f}{own}"
    )


def _print_header(name, preset, c, sides, steps, rounds, intervals, chunk) -> None:
    warmup, timed = steps
    what = (
        f"eval every {c.eval_interval} steps x {c.eval_iters} batches, log every {c.log_interval}"
        if intervals == "default"
        else "no evaluation or log line inside the timed steps"
    )
    print(
        f"\n== {name}: {preset.about} ({c.n_layer}/{c.n_head}/{c.n_embd}, block {c.block_size}, batch {c.batch_size} "
        f"x {c.gradient_accumulation_steps} accum, dtype {c.dtype}, compile {c.compile})"
    )
    how = f"taking turns of {chunk} steps" if chunk else "one whole run after the other"
    how += "; the side that starts first " + ("alternates between rounds" if len(sides) == 2 else "rotates")
    print(
        f"   {warmup} warm-up + {timed} timed optimizer steps, "
        f"{rounds} rounds of {' / '.join(s.label for s in sides)} ({how}); {what}"
    )


def _summary(sides: list[Side], results: list[list[dict]], peak_flops: float) -> dict:
    """The medians per side and the per-round ratios A / B, printed and returned."""
    print(f"   {'side':<28} {'ms/step':>9} {'tok/s':>10} {'MFU':>7} {'peak RSS':>9} {'GPU peak':>9}   (medians)")
    rows = []
    for side, res in zip(sides, results):
        tok = statistics.median(r["tokens_per_s"] for r in res)
        mfu = tok * res[0]["flops_per_token"] / peak_flops
        gpu = (
            f"{statistics.median(r['cuda_peak_mb'] for r in res):7.0f}MB"
            if res[0]["cuda_peak_mb"] is not None
            else "        -"
        )
        rss = statistics.median(r["peak_rss_mb"] for r in res)
        print(
            f"   {side.label:<28} {statistics.median(r['ms_per_step'] for r in res):9.1f} {tok:10,.0f} "
            f"{100 * mfu:6.2f}% {rss:7.0f}MB {gpu}"
        )
        rows.append(
            {
                "side": side.label,
                "tokens_per_s": tok,
                "ms_per_step": statistics.median(r["ms_per_step"] for r in res),
                "mfu": mfu,
                "peak_rss_mb": rss,
            }
        )
    against = [_ratios(sides[0], sides[j], results[0], results[j]) for j in range(1, len(sides))]
    print(
        "   loss at the last timed step: "
        + ", ".join(f"{s.label} {r[0]['loss_at_end']:.4f}" for s, r in zip(sides, results))
    )
    for side, res in zip(sides, results):
        if "own_ms_per_step" in res[0]:
            print(_own_times_line(side, res))
    # the first pair's ratios keep their keys at the top (A / B); every pair's are in `against`
    return {"sides": rows, **{k: v for k, v in against[0].items() if k != "side"}, "against": against}


def _own_times_line(side: Side, res: list[dict]) -> str:
    """nanoGPT's own per-iteration times next to the turns' timing, and its last evaluation."""
    own = ", ".join(f"{r['own_ms_per_step']:.1f}" for r in res)
    turns = ", ".join(f"{r['ms_per_step']:.1f}" for r in res)
    last = res[0]["final_val_loss"]
    val = "none" if last is None else f"step {res[0]['final_eval_step']}, val loss {last:.4f}"
    return f"   {side.label}'s own printed ms/iteration (median per round): {own}; its turns: {turns}; last eval: {val}"


def _ratios(a: Side, b: Side, ra: list[dict], rb: list[dict]) -> dict:
    """The per-round ratios of side a against side b, printed and returned."""
    tok = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(ra, rb)]
    mem = [x["peak_rss_mb"] / y["peak_rss_mb"] for x, y in zip(ra, rb)]
    known = all(r["cpu_ms_per_step"] is not None for r in ra + rb)
    cpu = [y["cpu_ms_per_step"] / x["cpu_ms_per_step"] for x, y in zip(ra, rb)] if known else None
    print(f"   tokens/s ratio {a.label} / {b.label}: {_spread(tok)}")
    if cpu:
        print(f"   CPU time per step, {b.label} / {a.label}: {_spread(cpu)}  (a speed ratio counted in CPU time)")
    print(f"   peak RSS ratio {a.label} / {b.label}: {_spread(mem)}")
    return {"side": b.label, "tokens_per_s_ratio": tok, "cpu_time_ratio": cpu, "peak_rss_ratio": mem}


# --------------------------------------------------------------------------- data preparation speed


def _best_time(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def data_speed(root: str = "data") -> list[tuple[str, float]]:
    """MB/s of encoding Tiny Shakespeare: char table, and GPT-2 BPE single-threaded and threaded."""
    text = read_text(fetch_corpus("tinyshakespeare", Path(root) / "raw"))
    mb = len(text.encode("utf-8")) / 1e6
    bpe = TiktokenTokenizer("gpt2")
    threads = min(8, os.cpu_count() or 1)
    rows = [
        ("char: vocabulary + encode", mb / _best_time(lambda: CharTokenizer.from_text(text).encode(text))),
        ("gpt2 BPE, one encode_ordinary call", mb / _best_time(lambda: bpe.enc.encode_ordinary(text))),
        (f"gpt2 BPE, tiktoken batch encoder, {threads} threads (prepare)", mb / _best_time(lambda: bpe.encode(text))),
    ]
    print(f"\n== data preparation speed, Tiny Shakespeare ({mb:.2f} MB), best of 3")
    for what, rate in rows:
        print(f"   {what:<48} {rate:8.1f} MB/s")
    return rows


# --------------------------------------------------------------------------- entry point


@cli.report_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        side, cfg_path, out_path, warmup, steps, chunk = argv[1:7]
        turns = Turns(*map(int, argv[7:9])) if len(argv) > 7 else None
        return child(side, Path(cfg_path), Path(out_path), int(warmup), int(steps), int(chunk), turns)
    p = _parser()
    args = p.parse_args(argv)
    user_steps = _checked_steps(p, args)  # checked before any work starts
    if args.whole and (not args.nanogpt or args.steps or args.configs):
        p.error(
            "--whole times the CPU recipe's whole command against nanoGPT's: give --nanogpt DIR"
            ", and shorten it with max_iters=N (not --steps or --configs)"
        )
    cli.setup_console_logging()
    if args.threads:
        torch.set_num_threads(args.threads)  # this process's work: the CPU peak, --costs
    if args.costs:
        from gptlab.bench.costs import main as costs_main  # only here: costs loads Lightning (datamodule)

        return costs_main(args.overrides, rounds=args.rounds, json_path=args.json, only=args.only)

    cli.check_override_keys(args.overrides)
    if args.whole:
        return _whole(args)
    sides = [parse_side(s) for s in args.sides]
    if args.nanogpt:
        sides.append(Side("nanogpt", nanogpt=nanogpt.check_dir(args.nanogpt)))
    probe = cli.compose("train", ["profile=none", *args.overrides])
    on_cuda = resolve_device(probe).accelerator == "gpu"
    names = _preset_names(args.configs, on_cuda)
    for n in names if args.nanogpt else ():
        steps, chunk = _steps_and_chunk(n, args, user_steps, on_cuda)
        nanogpt.check_turns(steps[1], chunk)
    dtype = "bfloat16" if on_cuda and torch.cuda.is_bf16_supported() else "float32"
    peak = peak_flops(on_cuda, dtype)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, load average {load[0]:.2f} at start")
    print(f"MFU against {peak[0] / 1e12:.3f} TFLOP/s: {peak[1]}")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "argv": argv,
        "peak_flops": peak,
        "load_at_start": load,
        "benches": [],
    }
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-") as work:
        for n in names:
            report["benches"] += _bench_both_intervals(n, sides, args, user_steps, on_cuda, peak, Path(work))
    if not args.no_data:
        report["data_mb_per_s"] = data_speed(str(probe.data.root))
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} at the end (other processes on this machine share its cores)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def _bench_both_intervals(n: str, sides, args, user_steps, on_cuda: bool, peak, work: Path) -> list[dict]:
    """One preset with each of --intervals (default, none), skipping none where it would repeat default."""
    preset = PRESETS[n]
    steps, chunk = _steps_and_chunk(n, args, user_steps, on_cuda)
    out = []
    for intervals in args.intervals.split(","):
        if intervals == "none" and "default" in args.intervals and not _marks_in_window(preset, args.overrides, *steps):
            print(
                f"\n== {n}: no evaluation or log line falls inside the timed steps"
                "; the run without them would be the same"
            )
            continue
        out.append(
            bench_preset(n, sides, args.overrides, args.rounds, steps, intervals, peak, work, args.threads, chunk)
        )
    return out


def _steps_and_chunk(n: str, args, user_steps, on_cuda: bool) -> tuple[tuple[int, int], int]:
    preset = PRESETS[n]
    steps = user_steps or (preset.gpu_steps if on_cuda else preset.cpu_steps)
    if args.chunk is not None:
        return steps, args.chunk
    chunk = max(1, steps[1] // 50)
    if args.nanogpt:  # nanoGPT's turns end at its progress lines: a chunk that divides the timed steps
        chunk = next(c for c in range(chunk, 0, -1) if steps[1] % c == 0)
    return steps, chunk


def _whole(args) -> None:
    """--whole: the CPU recipe's training command against nanoGPT's train.py, start to finish."""
    home = nanogpt.check_dir(args.nanogpt)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-") as work:
        report = nanogpt.whole(home, args.overrides, args.rounds, Path(work), args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other processes on this machine share its cores)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv, **report}, indent=1)
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gptlab.bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "overrides", nargs="*", help="train config overrides for every run (device=cpu, data.root=..., compile=true)"
    )
    p.add_argument(
        "--configs",
        help="comma-separated presets: cpu, baby, gpt2 (default: cpu,baby without a GPU, baby,gpt2 with one)",
    )
    p.add_argument(
        "--sides",
        nargs=2,
        default=["gptlab", "plain"],
        metavar="SIDE",
        help="the two sides, A then B: 'gptlab' or 'plain', each optionally followed by overrides"
        ", e.g. 'gptlab compile=true'",
    )
    p.add_argument("--rounds", type=int, default=3, help="A, B pairs per configuration")
    p.add_argument(
        "--nanogpt",
        metavar="DIR",
        help="also run nanoGPT's train.py from this checkout as a third side, C, taking turns with A and B",
    )
    p.add_argument(
        "--whole",
        action="store_true",
        help="with --nanogpt: time `python -m gptlab.train profile=cpu [overrides]` and nanoGPT's train.py with the "
        "same settings, each whole command start to finish, --rounds pairs",
    )
    p.add_argument("--steps", help="WARMUP,TIMED optimizer steps (default: per preset)")
    p.add_argument(
        "--intervals",
        default="default,none",
        help="default: the config's eval/log intervals; none: no eval or log inside the window"
        "; default,none (the default): both",
    )
    p.add_argument(
        "--chunk",
        type=int,
        help="optimizer steps per turn: both sides' processes stay alive and take turns of this many timed steps "
        "(default: a fiftieth of the timed steps); 0: one whole run after the other",
    )
    p.add_argument("--threads", type=int, help="torch threads per run (default: torch's choice, one per core)")
    p.add_argument("--no-data", action="store_true", help="skip the tokenizer speed figures")
    p.add_argument(
        "--costs", action="store_true", help="measure each single optimisation instead (see gptlab.bench.costs)"
    )
    p.add_argument("--only", help="with --costs: only the rows whose name contains this (e.g. evaluation)")
    p.add_argument("--json", help="also write every figure to this file")
    return p


def _checked_steps(p: argparse.ArgumentParser, args) -> tuple[int, int] | None:
    """Refuses bad --chunk, --intervals and --steps; returns --steps as (warm-up, timed), or None."""
    if args.chunk is not None and args.chunk < 0:
        p.error(f"--chunk takes a number of steps (0: no turns), not {args.chunk}")
    if not set(args.intervals.split(",")) <= {"default", "none"}:
        p.error(f"--intervals takes default, none or default,none, not '{args.intervals}'")
    user_steps = None
    if args.steps:  # checked before any work starts
        try:
            user_steps = tuple(int(x) for x in args.steps.split(","))
        except ValueError:
            user_steps = ()
        if len(user_steps) != 2 or min(user_steps) < 1:
            p.error(f"--steps takes WARMUP,TIMED, both at least 1, not '{args.steps}'")
    return user_steps


def _preset_names(configs: str | None, on_cuda: bool) -> list[str]:
    names = configs.split(",") if configs else (["baby", "gpt2"] if on_cuda else ["cpu", "baby"])
    for n in names:
        if n not in PRESETS:
            raise ConfigError(f"unknown config '{n}'; choose from {', '.join(PRESETS)}")
        if not on_cuda and PRESETS[n].cpu_steps is None:
            raise ConfigError(f"config '{n}' runs on a GPU only (none is visible here)")
    return names


if __name__ == "__main__":
    main()
