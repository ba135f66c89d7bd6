"""The Python API the README shows: `from gptlab import compose, train`."""

import gptlab


def test_compose_and_train_from_python(tiny, tmp_path):
    from gptlab import compose, train

    cfg = compose(*tiny, "max_iters=4", "eval_interval=2")
    assert cfg.max_iters == 4 and cfg.n_layer == 2
    metrics = train(cfg, tmp_path / "run")  # the module gptlab.train, callable as its train()
    assert metrics["status"] == "ok" and metrics["iters"] == 4
    assert (tmp_path / "run" / "metrics.json").is_file()
    from gptlab.train import train as train_fn

    assert train_fn is gptlab.train.train  # the same function under both names


def test_compose_chooses_the_profile_as_the_command_line_does():
    assert gptlab.compose("profile=cpu").n_layer == 4  # the CPU recipe's model
    assert gptlab.compose("profile=gpu").n_layer == 6  # the config as written
