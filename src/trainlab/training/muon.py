"""Muon: momentum orthogonalized by a Newton-Schulz iteration, for a network's hidden weight matrices and conv filters
(kellerjordan.github.io/posts/muon; the CIFAR-10 record airbench94_muon, github.com/KellerJordan/cifar10-airbench),
and SGD for the rest, in one optimizer so every part of trainlab (schedules, groups, checkpoints) sees one.

Each group's parameters of 2 or more dimensions, where the group has orthogonalize=True, step along the
orthogonalized (Nesterov) momentum of their gradient, viewed as a matrix of one row per output; the others (biases,
norms, the head by conf/optimizer/muon.yaml's group) take torch.optim.SGD's update with the group's momentum and
weight decay. torch.optim.Muon takes matrices only, and no conv filter, hence this one."""
import torch

# The quintic iteration's coefficients, chosen by Muon's author for the steepest slope at zero: a few steps take
# every singular value into about (0.7, 1.2), which trains as well as exact orthogonalization
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """`update` (rows x columns) with its singular values taken near 1 by `steps` Newton-Schulz steps. In bfloat16 on
    a GPU, as the source; in float32 on a CPU, where bfloat16 matrix products may be emulated (much slower)."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(torch.bfloat16 if update.is_cuda else torch.float32)
    x = x / (x.norm() + eps)  # every singular value <= 1, where the iteration converges
    tall = x.size(0) > x.size(1)
    if tall:  # the Gram matrix of the shorter side is the cheaper one
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(update.dtype)


class Muon(torch.optim.Optimizer):
    """lr, momentum, nesterov and weight_decay as torch.optim.SGD's (Muon's update is orthogonal, so its rate is the
    size of a step, whatever the loss's scale); ns_steps: Newton-Schulz steps; normalize: before each step, scale an
    orthogonalized weight back to a norm of sqrt(its rows), as airbench94_muon does (its decay is then moot);
    orthogonalize: whether the group's weights of 2+ dimensions take Muon's step (False: SGD's, e.g. the head);
    capturable: each group's lr may be a tensor on the device, which a CUDA graph reads (trainlab/training/step.py)."""

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0,
                 ns_steps: int = 5, normalize: bool = False, orthogonalize: bool = True, capturable: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"Muon: lr, momentum and weight_decay must be >= 0 and ns_steps >= 1, not lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}, ns_steps={ns_steps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      ns_steps=ns_steps, normalize=normalize, orthogonalize=orthogonalize,
                                      capturable=capturable))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                orthogonal = group["orthogonalize"] and p.ndim >= 2
                grad = p.grad if orthogonal or not decay else p.grad.add(p, alpha=decay)  # SGD's coupled decay
                if momentum:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()  # as SGD: the first step's buffer is its gradient
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad)
                    buf = state["momentum_buffer"]
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                if not orthogonal:
                    _descend(p, grad, lr)
                    continue
                if group["normalize"]:
                    p.mul_(len(p) ** 0.5 / p.norm())
                elif decay:
                    p.mul_(1 - lr * decay)  # decoupled, as torch.optim.Muon
                _descend(p, orthogonalize(grad.reshape(len(grad), -1), group["ns_steps"]).view_as(p), lr)
        return loss


def _descend(p: torch.Tensor, update: torch.Tensor, lr) -> None:
    """p -= lr x update, where lr is a number or (under a CUDA graph) a tensor on the device."""
    if isinstance(lr, torch.Tensor):
        p.sub_(update * lr)
    else:
        p.add_(update, alpha=-lr)
