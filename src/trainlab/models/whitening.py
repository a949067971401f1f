"""The whitening block: a first conv whose filters are set from the training images themselves, so its output
channels are decorrelated and of unit variance over the image's patches (a PCA of k x k patches, each eigenvector
once positive and once negative). As airbench94 does (github.com/KellerJordan/cifar10-airbench, legacy/airbench94.py,
`init_whitening_conv`); the code here is trainlab's own.

The filters are fitted once, at the start of a new run, on the block's own input (whatever comes before it); a
checkpoint carries them like any weight, so a resumed run, evaluate.py and predict.py never fit them again."""
import torch
from torch import nn

from trainlab.data.datasets import every_nth
from trainlab.distributed import Ranks, all_sum, same_as_first


class Whiten(nn.Conv2d):
    """A k x k conv, no padding, from C to 2 x C x k x k channels. `trainable`: whether its filters train after
    fitting (airbench keeps them fixed); its bias trains for the first `bias_epochs` epochs (None: throughout)."""

    def __init__(self, in_channels: int, kernel_size: int, eps: float = 5e-4, trainable: bool = False,
                 bias_epochs=None):
        super().__init__(in_channels, 2 * in_channels * kernel_size ** 2, kernel_size, bias=True)
        self.eps, self.bias_epochs = eps, bias_epochs
        self.weight.requires_grad_(trainable)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from `images` (N, C, H, W): the eigenvectors of their patches' covariance, each scaled by
        1/sqrt(eigenvalue + eps), largest first, then the same negated."""
        c, (h, w) = self.in_channels, self.kernel_size
        patches = images.float().unfold(2, h, 1).unfold(3, w, 1)  # (N, C, H', W', h, w)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * h * w)
        # in a data-parallel run, the patches of every process's images: the covariance one process would take
        products, count = all_sum(patches.T @ patches, torch.tensor(float(len(patches)), device=patches.device))
        values, vectors = torch.linalg.eigh(products / count)  # ascending
        values, vectors = values.flip(0), vectors.T.flip(0)  # largest first, one eigenvector a row
        # a sign of its own for each (eigh's is arbitrary, and flips with the order of a sum): its largest entry
        # positive, so a fit from the same images gives the same filters on any device or number of processes
        vectors = vectors * vectors.gather(1, vectors.abs().argmax(1, keepdim=True)).sign()
        filters = (vectors / torch.sqrt(values + self.eps).unsqueeze(1)).reshape(-1, c, h, w)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))
        same_as_first(self.weight)  # to the bit: the filters train in no process, so nothing else would align them

    def begin_epoch(self, epoch: int) -> None:
        if self.bias_epochs is not None:
            self.bias.requires_grad_(epoch <= self.bias_epochs)


def whiten_block(shape, kernel_size: int, eps: float = 5e-4, trainable: bool = False, bias_epochs=None) -> Whiten:
    return Whiten(shape[0], kernel_size, eps, trainable, bias_epochs)


def fit_whitening(model: nn.Module, batches, images: int = 5000, ranks: Ranks = Ranks()):
    """Fit every Whiten block of a new run's `model` on its own input, from the first `images` of `batches` ((images,
    targets) on the model's device, e.g. the training loader's first epoch), each block before the ones after it
    see its output -> a line saying what was fitted, or None for a model without one. In a data-parallel run each
    process's loader gives every ranks.world-th image of the epoch: it takes its share of the first `images`, and
    the fit sums the patches of all of them, as one process fits on the first `images`."""
    blocks = [m for m in model.modules() if isinstance(m, Whiten)]
    if not blocks:
        return None
    taken, seen, share = [], 0, len(range(images)[every_nth(ranks.shard)])
    for batch, _ in batches:
        taken.append(batch[:share - seen])
        seen += len(taken[-1])
        if seen >= share:
            break
    seen = int(all_sum(torch.tensor(seen, device=taken[0].device))[0])
    hooks = [block.register_forward_pre_hook(lambda module, inputs: module.fit(inputs[0])) for block in blocks]
    hooks.append(blocks[-1].register_forward_hook(_stop))  # the blocks after the last one need not run
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.cat(taken))
    except _Fitted:
        pass
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return f"whitening: {len(blocks)} block(s) fitted on the patches of {seen:,} training images"


class _Fitted(Exception):
    pass


def _stop(module, inputs, output):
    raise _Fitted


def begin_epoch(model: nn.Module, epoch: int) -> None:
    """What a block changes at an epoch's start (a whitening bias that trains for the first epochs only)."""
    for module in model.modules():
        if isinstance(module, Whiten):
            module.begin_epoch(epoch)
