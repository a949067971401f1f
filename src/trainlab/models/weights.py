"""Starting from saved weights, and freezing: `model.weights=FILE` (a torchvision weight file, a trainlab checkpoint,
or any torch.save of a state dict, read with weights_only=True so a file runs no code) loads every tensor whose name
and shape the model shares, the others (a head sized for other classes) named and left as initialised;
`model.freeze=[PREFIX, ...]` (or [backbone]: all but the last linear layer) keeps those parameters as they are."""
import logging
from pathlib import Path

import torch
from torch import nn

from trainlab.errors import TrainlabError, one_line, printable

log = logging.getLogger("trainlab")

BACKBONE = "backbone"  # model.freeze=[backbone]: every parameter but the head's (the last linear layer)


def load_weights(model: nn.Module, path) -> None:
    """The tensors of `path` that fit `model` (same name, same shape) loaded into it; what was left is said."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise TrainlabError(f"model.weights={printable(path)} is not a file: give a weight file (.pt, .pth)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one that would run code to load
        raise TrainlabError(f"model.weights={printable(path)} cannot be read as weights "
                            f"({one_line(f'{type(e).__name__}: {e}', 160)})") from None
    state = record.get("model", record) if isinstance(record, dict) else None  # a trainlab checkpoint's model
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise TrainlabError(f"model.weights={printable(path)} holds no state dict (names -> tensors)")
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise TrainlabError(f"model.weights={printable(path)} shares no weight with the model: the file's names "
                            f"begin {', '.join(list(state)[:3])}, the model's {', '.join(list(own)[:3])}; give "
                            "weights of the same architecture")
    model.load_state_dict(fits, strict=False)
    reshaped = [k for k in state if k in own and k not in fits]
    left = [k for k in own if k not in fits]
    log.info(f"weights: {len(fits)} of the model's {len(own)} tensors from {printable(path)}"
             + (f"; left as initialised: {', '.join(left[:6])}{', ...' if len(left) > 6 else ''}" if left else "")
             + (f" ({', '.join(reshaped[:4])} differ in shape)" if reshaped else ""))


def freeze(model: nn.Module, prefixes) -> None:
    """Parameters whose names start with one of `prefixes` (or all but the head's, for `backbone`) do not train."""
    names = [name for name, _ in model.named_parameters()]
    if BACKBONE in prefixes:
        head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
        frozen = [n for n in names if not any(n.startswith(f"{h}.") for h in head)]
    else:
        unknown = [p for p in prefixes if not any(n.startswith(str(p)) for n in names)]
        if unknown:
            raise TrainlabError(f"model.freeze: no parameter's name starts with {unknown[0]!r}; the model's begin "
                                f"{', '.join(names[:4])}, or freeze [{BACKBONE}] (all but the last linear layer)")
        frozen = [n for n in names if any(n.startswith(str(p)) for p in prefixes)]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    count = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    log.info(f"frozen: {len(frozen)} of {len(names)} parameter tensors ({count:,} numbers); training the rest")
