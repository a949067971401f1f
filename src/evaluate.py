"""A checkpoint's accuracy on its run's test split (split=val: validation), with a confusion matrix in TensorBoard:
python src/evaluate.py checkpoint=PATH  (data.root=FOLDER to test on other images of the same classes)"""
import atexit
import gc

import hydra
from omegaconf import DictConfig

from trainlab.config.allowlist import guard_hydra
from trainlab.cli import report_errors
from trainlab.inference.score import evaluate_checkpoint

guard_hydra("evaluate")  # every config Hydra composes is checked: see src/run.py


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> float:
    return evaluate_checkpoint(cfg)


if __name__ == "__main__":
    atexit.register(gc.freeze)  # exits about 1 s sooner: see src/run.py
    main()
