"""Mistakes in a command or a config, as one line: what went wrong composing (Hydra's or OmegaConf's error) names the
key or option and the closest valid one; a key added with `+` to a part with a schema is refused."""
import dataclasses
import difflib
import enum
import re
import typing

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ConfigTypeError, OmegaConfBaseException, ValidationError

from trainlab.config.schema import TYPE_NAMES
from trainlab.errors import TrainlabError


def check_known_keys(cfg: DictConfig) -> None:
    """Every key of a part with a schema is one the schema declares. Hydra lets `+trainer.epochz=3` add a key to any
    part (that is what `+` is for) and the run would go on as if it were not there; a part without a schema (an
    optimizer, scheduler or loss YAML of the user's own) still takes any key, as its `_target_` may."""
    for part in cfg:
        if part == "hydra" or OmegaConf.is_missing(cfg, part) or not isinstance(cfg[part], DictConfig):
            continue
        schema = OmegaConf.get_type(cfg, part)
        if not dataclasses.is_dataclass(schema):
            continue
        declared = [f.name for f in dataclasses.fields(schema)]
        for key in cfg[part]:
            if key not in declared:
                raise TrainlabError(f"{part}.{key} is not a key of {part}{_did_you_mean(part, key, declared)}")


def composition_error(error: Exception, groups=()) -> str:
    """What went wrong composing the config (Hydra's or OmegaConf's exception) -> one line that names the key or
    option, and the closest valid one. `groups`: the config groups, for a misspelt group name."""
    if isinstance(error, TrainlabError):
        return str(error)
    options = getattr(error, "options", None)
    missing = getattr(error, "missing_cfg_file", None)
    if missing and "/" in str(missing) and options is not None:  # model=resnet
        group, name = str(missing).rsplit("/", 1)
        return (f"{group}={name} is not an option of {group}{_did_you_mean(None, name, options, group + '=')}; "
                f"the options: {', '.join(options)}")
    appended = re.match(r"Could not append to config\. An item is already at '([^']+)'", str(error))
    if appended:  # +model.pretrained=true, where the key exists: + is for keys a config does not have
        return f"{appended.group(1)} is already a key: set it without the +, {appended.group(1)}=..."
    override = getattr(error, "override", None)
    if override is not None:  # the override grammar
        return (f"'{override}' cannot be read: {str(error).splitlines()[0]}; quote a value with spaces or brackets, "
                "e.g. 'data.mean=[0.5,0.5,0.5]'")
    cause = error.__cause__
    if isinstance(error, OmegaConfBaseException):
        cause = error
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, OmegaConfBaseException) and full_key:
        parent, _, key = str(full_key).rpartition(".")
        node = getattr(cause, "parent_node", None)
        if isinstance(cause, ConfigKeyError) or "not in" in str(cause).split("\n")[0]:  # an unknown key
            known = [str(k) for k in node] if isinstance(node, DictConfig) else []
            if not parent:
                known += [g for g in groups if g not in known]
            written = re.search(r"override '([^']+)'", str(error))  # trainr.epochs, where trainr is the unknown key
            rest = written.group(1)[len(full_key):] if written and written.group(1).startswith(full_key) else ""
            where = f" of {parent}" if parent else ""
            return f"{full_key}{rest} is not a key{where}{_did_you_mean(parent or None, key, known, rest=rest)}"
        if isinstance(cause, ValidationError):
            wanted = _type_name(getattr(cause, "object_type", None), key)
            value = getattr(cause, "value", None)
            given, shown = ("null", "null") if value is None else (value, repr(value))
            return f"{full_key}={given} cannot work: {full_key} takes {wanted}, not {shown}"
        if isinstance(cause, ConfigTypeError) and "deletion" in str(cause):
            return f"~{full_key}: {full_key} cannot be removed, every run reads it; set it instead ({full_key}=...)"
    merging = re.match(r"Error merging override ([^=\s]+)=(.*)", str(error))
    if merging and isinstance(cause, ValidationError):  # optimizer.groups=[1]: an entry of another type
        reason = str(cause).strip().splitlines()[0]
        return f"{merging.group(1)}={merging.group(2)} cannot work: {reason[:1].lower()}{reason[1:]}"
    lines = str(error).strip().splitlines()
    first = (lines[0] if not lines[0].endswith(":") else " ".join(lines[:2])) if lines else type(error).__name__
    twice = re.fullmatch(r"(\S+) appears more than once in the final defaults list", first)
    if twice:  # +model=tudui: a second choice in a group that has one
        group = twice.group(1)
        return f"+{group}=... chooses {group} a second time: choose with {group}=NAME, without the +"
    return first


def unchosen_key(overrides) -> str:
    """The line for a key set under a part that is null: a tracker's setting (logger.mlflow.tracking_uri=...) where
    logger does not choose that tracker."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("logger.") and key.count(".") >= 2:
            name = key.split(".")[1]
            return (f"{key} is a setting of the {name} tracker, which logger does not choose: choose it too, "
                    f"logger=[tensorboard,{name}]")
    return ""


def _did_you_mean(parent, key: str, candidates, prefix: str = "", rest: str = "") -> str:
    """': did you mean parent.closest?', or '' when nothing is close enough to be the one meant."""
    close = difflib.get_close_matches(str(key), [str(c) for c in candidates], n=1, cutoff=0.75)
    if not close:
        return ""
    return f": did you mean {prefix}{parent + '.' if parent else ''}{close[0]}{rest}?"


def _type_name(schema, key: str) -> str:
    """The type a schema's field takes, in words: 'an integer', 'a number or null', ..."""
    hints = typing.get_type_hints(schema) if dataclasses.is_dataclass(schema) else {}
    hint = hints.get(key)
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base = typing.get_origin(hint) or hint
    if isinstance(base, type) and issubclass(base, enum.Enum):  # hydra.sweeper.pruner: its options, by name
        name = "one of " + ", ".join(member.name for member in base)
    else:
        name = TYPE_NAMES.get(base, "another type")
    return name + (" or null" if optional else "")
