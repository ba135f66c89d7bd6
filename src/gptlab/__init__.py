"""gptlab: train GPT language models with PyTorch Lightning and Hydra, nanoGPT-style."""

__version__ = "0.1.0"
