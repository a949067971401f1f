"""The classes of new images, from a trained checkpoint or its ONNX export:
python src/predict.py checkpoint=PATH image=FILE_OR_FOLDER"""
import atexit
import gc

import hydra
from omegaconf import DictConfig

from trainlab.config.allowlist import guard_hydra
from trainlab.cli import report_errors
from trainlab.inference.predict import predict

guard_hydra("predict")  # every config Hydra composes is checked: see src/run.py


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    atexit.register(gc.freeze)  # exits about 1 s sooner: see src/run.py
    main()
