"""The run's TensorBoard writer: scalars, the first batch as an image grid, the model graph and the hparams."""
import logging
import warnings

import torch

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

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracing warns about things that do not matter for a picture
                self.writer.add_graph(model, example)
        except Exception as e:  # the graph is a nicety: a model that cannot be traced still trains
            log.warning("model graph not logged: %s", str(e).splitlines()[0])

    def hparams(self, hparams: dict, metrics: list) -> None:
        """Register this run in the HPARAMS tab with its settings; `metrics` are scalar tags the run writes."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        # Written into this run's own folder (add_hparams would make a new sub-run), so the HPARAMS table links
        # each row to the run's curves.
        if isinstance(self.writer, _NoWriter):
            return
        for summary in hparams_summaries(values, {tag: 0.0 for tag in metrics}):
            self.writer.file_writer.add_summary(summary)

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
