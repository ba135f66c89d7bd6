"""The entry points: the console script's commands, nanoGPT-style arguments, composing configs,
the one error boundary, and the Hydra sweep callback."""
