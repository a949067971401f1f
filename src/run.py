"""Train one model as the composed config says:  python src/run.py model=tudui optimizer=sgd  (-m for a sweep)."""
import atexit
import gc

# Start-up makes some 600,000 objects that live to the end; the garbage collector's passes over them while they are
# made cost about 0.9 s. It stays off until the first training step, where trainlab.training.recipe turns it back on.
gc.disable()

import hydra  # noqa: E402 (after the line above, which must come first)
from omegaconf import DictConfig

from trainlab.config.allowlist import guard_hydra
from trainlab.cli import report_errors
from trainlab.launch import Launch

guard_hydra("config", writes_runs=True)  # every config Hydra composes is checked before anything is built


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> float:
    from trainlab.training.recipe import run  # torch: a second; a mistake in the command is reported without it

    return run(cfg, Launch.from_hydra())  # the best validation value of trainer.monitor: a search's objective


if __name__ == "__main__":
    atexit.register(gc.freeze)  # a run that ends before its first step: its exit need not scan start-up's objects
    main()
