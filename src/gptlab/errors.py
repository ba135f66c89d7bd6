"""Errors that carry a message for the user. Entry points print them as one line and exit."""


class GptlabError(Exception):
    """A problem the user can fix; the message says how."""

    exit_code = 2


class ConfigError(GptlabError):
    """Settings that contradict each other or make no sense (caught before training starts)."""


class CheckpointError(GptlabError):
    """A checkpoint that is missing, corrupt, unsafe, or does not fit the model or data."""


class NonFiniteLossError(GptlabError):
    """Training diverged: the loss became NaN or infinite."""

    exit_code = 1
