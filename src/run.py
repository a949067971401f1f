"""Train one model as the composed config says:  python src/run.py model=tudui optimizer=sgd  (-m for a sweep)."""
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
    main()
