"""Where training stands: the epoch, the batch of it, and what a step is. The one place with step arithmetic."""
from dataclasses import dataclass, field


@dataclass
class Clock:
    """(epoch, batch) is the next batch to train: epoch 1-based, `batch` batches of it done. A step is one batch
    trained, and each step is one optimizer update; the global step counts them from the run's start (TensorBoard's
    x axis, trainer.checkpoint_every_n_steps)."""
    epochs: int  # trainer.epochs
    batches: int  # steps in an epoch
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
    def total_steps(self) -> int:
        """The steps of the whole run, trainer.epochs of them."""
        return self.epochs * self.batches

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
