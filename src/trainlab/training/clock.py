"""Where training stands: the epoch, the batch of it, and what a step is. The one place with step arithmetic."""
from dataclasses import dataclass, field


@dataclass
class Clock:
    """(epoch, batch) is the next batch to train: epoch 1-based, `batch` batches of it done. A step is one batch
    trained; the global step counts them from the run's start (TensorBoard's x axis, trainer.checkpoint_every_n_steps).
    An optimizer update follows every `accumulate` steps (trainer.accumulate_grad_batches) and an epoch's last: the
    schedule and weight averaging count updates."""
    epochs: int  # trainer.epochs
    batches: int  # steps in an epoch
    accumulate: int = 1  # steps whose gradients one update applies
    epoch: int = 1
    batch: int = 0
    first_epoch: int = field(default=1, init=False)  # the epoch this process began at: a resumed run's later one

    @property
    def step(self) -> int:
        """Steps done since the run began: the global step of the last one."""
        return self.step_at(self.batch)

    def step_at(self, batch: int) -> int:
        """The global step of batch `batch` (1-based) of the epoch in progress."""
        return (self.epoch - 1) * self.batches + batch

    @property
    def total_updates(self) -> int:
        """The optimizer updates of the whole run: what a schedule laid out over the run spans."""
        return self.epochs * -(-self.batches // self.accumulate)

    def window(self, batch: int) -> tuple:
        """Batch `batch` (1-based) of an epoch -> (its share of the update's gradient: 1 / the batches of its window,
        whether the update follows it). The windows start afresh each epoch; the last may be shorter."""
        start = (batch - 1) // self.accumulate * self.accumulate + 1
        end = min(start + self.accumulate - 1, self.batches)
        return 1 / (end - start + 1), batch == end

    @property
    def epochs_done(self) -> int:
        return self.epoch - 1

    @property
    def weights_epoch(self) -> int:
        """The epoch the model's weights come from: the last finished one, or the one in progress part-way."""
        return self.epoch - (self.batch == 0)

    @property
    def to_train(self) -> bool:
        return self.epoch <= self.epochs

    def epochs_left(self) -> range:
        return range(self.epoch, self.epochs + 1)

    def end_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.first_epoch = self.epoch

    def facts(self) -> dict:
        """What a checkpoint's readers read: the epoch its weights come from."""
        return {"epoch": self.weights_epoch}
