"""The run's data on one of two paths: resident on the device (trainlab/data/resident.py) or torch's DataLoader
(trainlab/data/datasets.py), with the same splits, order and random steps on both."""
from trainlab import distributed
from trainlab.data.datasets import build_data, build_loaders
from trainlab.data.resident import NotResident, build_resident
from trainlab.data.transforms import build_transforms
from trainlab.errors import TrainlabError

DATA_PATHS = ("auto", "resident", "loader")  # trainer.data_path


def build_run_data(data_cfg, transforms: dict, device, ranks=distributed.Ranks(), data_path: str = "auto",
                   seed: int = 0, progress: bool = False) -> tuple:
    """cfg.data and the checked transform steps -> (DataSplits, Loaders, which path and why): resident on the device
    when the pipelines allow it and the data fits (`data_path` auto, trainer.data_path), else the DataLoader. Both
    train loaders are TrainLoaders; `seed` draws the training order and the random steps; `progress`: a bar while
    decoding."""
    reason = "trainer.data_path=loader"
    shard = ranks.shard
    distributed.shard_size(data_cfg.batch_size, ranks)  # the batch must split evenly
    if data_path != "loader":
        try:
            return *build_resident(data_cfg, transforms, device, seed, progress, shard), "resident on the device"
        except NotResident as e:
            if data_path == "resident":
                raise TrainlabError(f"trainer.data_path=resident cannot be used: {e}; use auto or loader") from None
            reason = str(e)
    data = build_data(data_cfg, *build_transforms(transforms))
    return data, build_loaders(data_cfg, data, seed, shard), f"DataLoader ({reason})"
