"""Losses of trainlab's own, for conf/loss/ (torch's CrossEntropyLoss is used as it is). Each takes class indices
(B,) or soft targets (B, classes), as mixup makes."""
from torch import nn


class SoftmaxMSELoss(nn.Module):
    """Mean squared error between softmax(logits) and the targets' class probabilities (one-hot for class indices):
    MSELoss made to fit classification."""

    distance = staticmethod(nn.functional.mse_loss)

    def forward(self, logits, target):
        if target.ndim == 1:
            target = nn.functional.one_hot(target, logits.shape[1])
        return self.distance(logits.softmax(dim=1), target.to(logits.dtype))


class SoftmaxL1Loss(SoftmaxMSELoss):
    """Mean absolute error between softmax(logits) and the targets' class probabilities."""

    distance = staticmethod(nn.functional.l1_loss)
