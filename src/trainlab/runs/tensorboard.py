"""The run's TensorBoard writer: scalars, the first batch as an image grid, the model graph, the hparams and text."""
import logging
import time
import warnings

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.launch import Launch

log = logging.getLogger("trainlab")



class RunWriter:
    """Event files in `log_dir`; `tensorboard --logdir outputs` shows each run folder as one run."""

    def __init__(self, log_dir, purge_step=None, enabled=True):
        if not enabled:  # a distributed run's other processes: every method does nothing
            self.writer = _NoWriter()
            return
        from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: about a second, so only here

        # purge_step: a resumed run drops what the stopped one logged after its checkpoint, so no step appears twice
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image_grid(self, images: torch.Tensor, normalization) -> None:
        """The batch as the model sees it after the transforms, de-normalized so colours look right."""
        images = images[:64].detach().float().cpu()
        if normalization is not None:
            mean, std = (torch.tensor(v).view(-1, 1, 1) for v in normalization)
            images = images * std + mean
        self.writer.add_image("train/first_batch", _grid(images.clamp(0, 1), columns=8), 0)

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        """A (3, H, W) picture with values in [0, 1]."""
        self.writer.add_image(tag, picture, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        """Markdown in the TEXT tab (TensorBoard stores it under `<tag>/text_summary`)."""
        self.writer.add_text(tag, markdown, step)

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracing warns about things that do not matter for a picture
                self.writer.add_graph(model, example)
        except Exception as e:  # the graph is a nicety: a model that cannot be traced still trains
            log.warning("model graph not logged: %s", str(e).splitlines()[0])

    def hparams(self, values: dict, metrics: list, swept=None) -> None:
        """This run's row in the HPARAMS tab: `values`, {dotted key: number, text or bool}, as its session's start.

        TensorBoard builds the tab's columns from one run's experiment summary, the first it finds, else from every
        run's values: then each key is a column, its values its domain, and a key whose values differ across the runs
        is marked as differing, listed first and shown (the first five columns are). With `swept`, the keys this
        job's sweep varies, the job also writes the sweep's experiment summary, the same in every job of the sweep:
        every key, the swept ones differing, and `metrics`, scalar tags, as the metric columns in that order (the
        first five shown). Without it (a single run, an Optuna search) TensorBoard compares what it finds."""
        if isinstance(self.writer, _NoWriter):
            return
        from tensorboard.compat.proto.summary_pb2 import Summary  # what torch's writer writes
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        def summary(tag, **data):
            content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
            return Summary(value=[Summary.Value(tag=tag, metadata=content)])

        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())  # no group name: the run names the row
        kinds = {}
        for key, value in values.items():
            if isinstance(value, bool):
                start.hparams[key].bool_value, kinds[key] = value, api_pb2.DATA_TYPE_BOOL
            elif isinstance(value, (int, float)):
                start.hparams[key].number_value, kinds[key] = value, api_pb2.DATA_TYPE_FLOAT64
            else:
                start.hparams[key].string_value, kinds[key] = str(value), api_pb2.DATA_TYPE_STRING
        if swept is not None:
            # No domains: a run of another sweep in the same logdir would be filtered out of the table by them.
            experiment = api_pb2.Experiment(
                time_created_secs=time.time(),
                hparam_infos=[api_pb2.HParamInfo(name=key, type=kind, differs=key in swept)
                              for key, kind in kinds.items()],
                metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
            self.writer.file_writer.add_summary(summary(metadata.EXPERIMENT_TAG, experiment=experiment))
        self.writer.file_writer.add_summary(summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _grid(images: torch.Tensor, columns: int, gap: int = 2) -> torch.Tensor:
    """(N, C, H, W) -> one (3, rows*(H+gap)+gap, columns*(W+gap)+gap) picture, grey images shown in grey."""
    n, c, h, w = images.shape
    images = images.expand(n, 3, h, w) if c == 1 else images[:, :3]
    rows = -(-n // columns)
    grid = torch.zeros(3, rows * (h + gap) + gap, columns * (w + gap) + gap)
    for i, image in enumerate(images):
        top, left = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
        grid[:, top:top + h, left:left + w] = image
    return grid


class _NoWriter:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


# What HPARAMS shows of every run, by dotted key, beside the keys a command line sets; a group shows its option.
HPARAMS = ("data", "transform", "model", "optimizer", "optimizer.lr", "optimizer.weight_decay", "scheduler", "loss",
           "data.batch_size", "trainer.epochs", "trainer.seed")


def hparams_values(cfg: DictConfig, launch: Launch) -> dict:
    """The settings that tell runs apart, for TensorBoard's HPARAMS tab, each once under its dotted key: HPARAMS and
    every key the command line set, so a sweep's job shows what the sweep varies. A config group shows the option's
    name (optimizer: adam, loss: cross_entropy): Hydra's choice, else the command line's, else the name the config
    holds or its class (a run composed without them, in a notebook). Numbers stay numbers; null reads "null"."""
    given = {}
    for override in launch.overrides:
        key, _, value = override.partition("=")
        if not key.startswith("~"):
            given[key.lstrip("+")] = value
    values = {}
    for key in dict.fromkeys([*HPARAMS, *given]):
        value = OmegaConf.select(cfg, key, default=None)
        if key in launch.choices:
            value = launch.choices[key]
        elif isinstance(value, DictConfig):  # a group Hydra's choices do not name
            target = value.get("_target_")
            value = given.get(key) or value.get("name") or (target.rsplit(".", 1)[-1] if target else None)
            value = value or ("none" if key == "scheduler" else None)
        elif value is not None and not isinstance(value, (int, float, str, bool)):  # a list
            value = given.get(key) or str(OmegaConf.to_container(value))
        elif value is None and key in given:
            value = "null"
        if value is not None:
            values[key] = value
    return values
