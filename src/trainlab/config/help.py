"""`--help`'s list of settings: each key with its value and the reason its YAML gives beside it (conf/config.yaml's
hydra.help.template asks for it with ${settings_help:})."""
import re

from omegaconf import OmegaConf

_SETTING = re.compile(r"^(?P<indent> *)(?P<key>[\w.]+):(?P<rest>.*)$")


def settings_help(root) -> str:
    """Every setting of the composed config as `key: value  # what it does`, the reason read from the YAML file that
    sets it (the chosen option's, else conf/config.yaml's); `$` doubled, as Hydra's help template reads it."""
    from trainlab.config.hydra_policy import PACKAGED_CONF

    choices = OmegaConf.to_container(root.hydra.runtime.choices)
    reasons = _reasons(PACKAGED_CONF / "config.yaml", "")
    for group, option in choices.items():
        if option is not None and not group.startswith("hydra/"):
            reasons.update(_reasons(PACKAGED_CONF / group / f"{option}.yaml", group))
    lines = []
    for key, value in _settings(OmegaConf.to_container(root, resolve=False)):
        if key.startswith("hydra"):
            continue
        shown = f"{key}: {_yaml(value)}"
        lines.append(f"{shown:<44}  # {reasons[key]}" if key in reasons else shown)
    return "\n".join(lines).replace("$", "$$")


def _yaml(value) -> str:
    """A value as the YAML files write it: true, null, [a, b]."""
    import yaml

    return value if isinstance(value, str) and value == "[...]" else \
        yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("...\n").strip()


def _settings(tree, prefix=""):
    """(dotted key, value) of each setting: a list (a pipeline, the blocks) as one value."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _settings(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", "[...]" if isinstance(value, list) and len(str(value)) > 60 else value


def _reasons(path, package: str) -> dict:
    """{dotted key: the comment beside it} in one YAML file of conf/ (a comment's continuation lines joined)."""
    if not path.is_file():
        return {}
    text = path.read_text()
    package = "" if "@package _global_" in text else package
    reasons, stack, last = {}, [], None
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            if last is not None and line.startswith(" " * 10):  # a reason continued under the one above
                reasons[last] += " " + line.strip().lstrip("# ")
            continue
        found, last = _SETTING.match(line.split(" #")[0]), None
        if not found:
            continue
        depth = len(found["indent"])
        stack = [(d, k) for d, k in stack if d < depth] + [(depth, found["key"])]
        key = ".".join(filter(None, [package, *(k for _, k in stack)]))
        if " #" in line and found["rest"].strip():
            reasons[key], last = line.split(" #", 1)[1].strip(), key
    return reasons
