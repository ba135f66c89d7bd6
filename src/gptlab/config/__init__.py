"""Settings: from a config Hydra composed to checked values (checks), the device and precision
(device), and the small dataclasses the library takes (settings). Knows OmegaConf, not Hydra."""

from gptlab.config.checks import BOOL_KEYS, INSPECT, LR_FIND_RULES, SAMPLE, SCHEMA, check_keys, validate
from gptlab.config.device import DeviceChoice, resolve_device
from gptlab.config.settings import data_spec, model_config, plain, token_masking

__all__ = [
    "BOOL_KEYS",
    "INSPECT",
    "LR_FIND_RULES",
    "SAMPLE",
    "SCHEMA",
    "check_keys",
    "DeviceChoice",
    "data_spec",
    "model_config",
    "plain",
    "resolve_device",
    "token_masking",
    "validate",
]
