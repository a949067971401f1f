"""Starting from saved weights, and freezing: `model.weights=FILE` (a torchvision weight file, a trainlab checkpoint,
or any torch.save of a state dict, read with weights_only=True so a file runs no code) loads every tensor whose name
and shape the model shares, the others (a head sized for other classes) named and left as initialised;
`model.pretrained=true` does the same with torchvision's default weights for model.arch, fetched once into torch's
cache (download.pytorch.org, its hash checked); `model.freeze=[PREFIX, ...]` (or [backbone]: all but the head, the
last linear layer) keeps those parameters as they are, and `model.head_lr_scale` gives the head its own rate."""
import logging
from pathlib import Path
from urllib.parse import urlparse

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
    reshaped = [k for k in own if k in state and k not in fits]  # a head sized for other classes
    absent = [k for k in own if k not in state]
    left = [f"{_names(reshaped)} (another shape in the file)"] * bool(reshaped) + [f"{_names(absent)} (not in the "
                                                                                   "file)"] * bool(absent)
    log.info(f"weights: {len(fits)} of the model's {len(own)} tensors from {printable(path)}"
             + (f"; left as initialised: {'; '.join(left)}" if left else ""))


def _names(keys: list) -> str:
    return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")


def pretrained_file(arch: str) -> Path:
    """torchvision's default weights for `arch`: the file in torch's cache, downloaded there first if it is not."""
    import torchvision.models

    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError):
        raise TrainlabError(f"model.pretrained=true: torchvision has no weights for {arch}; give model.weights=FILE "
                            "or train it from scratch") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = torch.hub.HASH_REGEX.search(path.name)  # resnet18-f37072fd.pth: the file's sha256 begins f37072fd
    log.info(f"weights: downloading {url} into {path.parent}")
    try:  # written under a temporary name and moved into place once whole and checked
        torch.hub.download_url_to_file(url, str(path), hash_prefix.group(1) if hash_prefix else None, progress=False)
    except (OSError, RuntimeError) as e:  # no route to the internet, a proxy refusing, a wrong hash
        raise TrainlabError(f"model.pretrained=true could not fetch {url} ({one_line(e, 120)}): download that file "
                            "where the internet is and give model.pretrained=false model.weights=FILE") from None
    return path


def head(model: nn.Module) -> str:
    """The name of the model's head: its last linear layer (torchvision's fc, classifier.1, heads.head, ...)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TrainlabError("the model has no linear layer to call its head: name the prefixes to freeze instead of "
                            f"[{BACKBONE}], and leave model.head_lr_scale null")
    return linears[-1]


def _under(name: str, prefix: str) -> bool:
    """Whether parameter `name` is `prefix` or inside it: layer1 holds layer1.0.conv1.weight, not layer10.weight."""
    return name == prefix or name.startswith(f"{prefix}.") or prefix.endswith(".") and name.startswith(prefix)


def head_parameters(model: nn.Module) -> set:
    """The names of the head's parameters."""
    name = head(model)
    return {n for n, _ in model.named_parameters() if _under(n, name)}


def freeze(model: nn.Module, prefixes) -> None:
    """Parameters under one of `prefixes` (module names: conv1, layer1, layer2.0) or all but the head's (for
    `backbone`) do not train."""
    names = [name for name, _ in model.named_parameters()]
    if BACKBONE in prefixes:
        keep = head_parameters(model)
        frozen = [n for n in names if n not in keep]
    else:
        unknown = [p for p in prefixes if not any(_under(n, str(p)) for n in names)]
        if unknown:
            raise TrainlabError(f"model.freeze: the model has no module or parameter {str(unknown[0])!r}; its "
                                f"parameters begin {', '.join(names[:4])}; or freeze [{BACKBONE}] (all but the head)")
        frozen = [n for n in names if any(_under(n, str(p)) for p in prefixes)]
    for name, parameter in model.named_parameters():
        if name in frozen:  # the others as the model has them (a batchnorm's frozen_scale stays frozen)
            parameter.requires_grad_(False)
    log.info(f"frozen: {_modules(frozen)} ({_numbers(model, frozen)}); training "
             f"{_modules([n for n in names if n not in frozen]) or 'nothing'} ({_numbers(model, set(names) - set(frozen))})")


def _modules(names: list) -> str:
    """Parameter names -> their top-level modules, in order: conv1, bn1, layer1, ..."""
    tops = list(dict.fromkeys(n.split(".")[0] for n in names))
    return ", ".join(tops[:8]) + (f", ... ({len(tops)} in all)" if len(tops) > 8 else "")


def _numbers(model: nn.Module, names) -> str:
    names = set(names)
    return f"{sum(p.numel() for n, p in model.named_parameters() if n in names):,} parameters"
