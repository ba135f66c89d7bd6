"""Errors that carry a message for the user. Entry points print them as one line and exit."""


class GptlabError(Exception):
    """A problem the user can fix; the message says how."""

    exit_code = 2
    label = "error"  # the word before the message on the console


class ConfigError(GptlabError):
    """Settings that contradict each other or make no sense (caught before training starts)."""


class CheckpointError(GptlabError):
    """A checkpoint that is missing, corrupt, unsafe, or does not fit the model or data."""


class NonFiniteLossError(GptlabError):
    """Training diverged: the loss became NaN or infinite."""

    exit_code = 1


class RunInterrupted(GptlabError):
    """SIGTERM or SIGINT stopped training after a checkpoint was saved; the run can be resumed.

    The exit code follows the shell's convention for a process ended by a signal: 128 + its
    number (143 for SIGTERM, 130 for SIGINT), so schedulers and scripts see it did not finish.
    """

    label = "stopped"

    def __init__(self, detail: str, signum: int, run_dir: str):
        super().__init__(f"{detail} Continue with resume=true out_dir={run_dir} and the same settings.")
        self.detail, self.run_dir = detail, run_dir
        self.exit_code = 128 + int(signum)
