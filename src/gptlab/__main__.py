"""`gptlab <command> [arguments]` (the console script) and `python -m gptlab <command>`.

Each command is the module `python -m gptlab.<command>` runs, started the same way (runpy), so
that Lightning's DDP launcher, which starts further ranks by running `python -m <that module>`
again, finds it."""

from __future__ import annotations

import difflib
import runpy
import sys

from gptlab import __version__
from gptlab.cli.common import report_errors

COMMANDS = {  # command: (module, what it does)
    "train": ("gptlab.train", "train a GPT, or a sweep with -m (key=value overrides, nanoGPT's --key=value too)"),
    "sample": ("gptlab.sample", 'generate text from a run: ckpt=<run folder or .ckpt> start="..."'),
    "prepare": (
        "gptlab.prepare",
        "tokenize a dataset into data/<name>/: data=shakespeare_char | shakespeare | text data.path=FILE",
    ),
    "inspect": ("gptlab.inspect", "show a batch exactly as the model sees it"),
    "lr-find": ("gptlab.lr_find", "the learning-rate range test: lr_find.png and a suggested learning_rate"),
    "export": ("gptlab.export", "a run's model as a Hugging Face GPT-2 folder: <run> --format hf <dir>"),
    "report": ("gptlab.report", "a sweep's report.md, loss curves and the experiment's verdict"),
    "gradviz": ("gptlab.gradviz", "per-layer gradient heatmap of a run"),
    "docstats": ("gptlab.docstats", "how a dataset's documents fill packed and padded batches"),
    "bench": ("gptlab.bench", "gptlab against a plain PyTorch loop, side by side"),
}


def usage() -> str:
    lines = [
        f"gptlab {__version__}: train GPT language models (Lightning + Hydra, nanoGPT's keys)",
        "",
        "usage: gptlab <command> [arguments]   (gptlab <command> --help for a command's own help)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "The same commands run as python -m gptlab.<command> (lr-find: gptlab.lr_find). Docs: docs/ in the repository.",
    ]
    return "\n".join(lines)


@report_errors  # also around the command's imports: Ctrl-C there is one line too
def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if args[0] in ("-V", "--version"):
        print(f"gptlab {__version__}")
        return
    if args[0] not in COMMANDS:
        close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(
            f"error: unknown command '{args[0]}'.{hint} The commands: {', '.join(COMMANDS)} (gptlab --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    module = COMMANDS[args[0]][0]
    sys.argv = [f"gptlab {args[0]}", *args[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
