"""gptlab's Optuna sweeper for Hydra (hydra/sweeper=gptlab_optuna); see sweeper.py."""
