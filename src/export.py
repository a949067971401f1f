"""A trained checkpoint as a file other runtimes load, checked on real images before it is written:
python src/export.py checkpoint=PATH format=onnx  (or torchscript, exported_program)"""
import atexit
import gc

import hydra
from omegaconf import DictConfig

from trainlab.config.allowlist import guard_hydra
from trainlab.cli import report_errors
from trainlab.inference.export import export_checkpoint

guard_hydra("export")  # every config Hydra composes is checked: see src/run.py


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    export_checkpoint(cfg)


if __name__ == "__main__":
    atexit.register(gc.freeze)  # exits about 1 s sooner: see src/run.py
    main()
