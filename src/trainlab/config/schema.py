"""Structured-config schemas, registered in Hydra's ConfigStore.

Values and their reasons live in conf/*.yaml; these classes only say which keys exist and what type each holds, so a
misspelt key, an unknown option or a wrong type fails when Hydra composes the config, before any data is touched.
`MISSING` marks a key the YAML must set; `None` marks a key that only some options use.
"""
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from trainlab.errors import EnvRefused, TrainlabError


@dataclass(frozen=True)
class Rule:
    """What a setting's value must be beyond its type (`ok(value)`), in the words an error gives (`should`)."""
    ok: Callable
    should: str


def at_least(low, null: bool = False) -> Rule:
    return Rule(lambda v: (null and v is None) or (v is not None and v >= low),
                f"at least {low}" + (", or null" if null else ""))


def above(low, null: str = "") -> Rule:
    return Rule(lambda v: (null and v is None) or (v is not None and v > low), f"above {low}" + null)


def one_of(*allowed) -> Rule:
    return Rule(lambda v: v in allowed, "one of " + ", ".join(allowed))


def setting(rule: Optional[Rule] = None, on_resume: bool = False):
    """A schema field, its value set in conf/: `rule` checked before anything runs (check_values), `on_resume`
    whether a resumed run may take a new value from the command (it says how the run goes on, not what it is)."""
    return field(default=MISSING, metadata={"rule": rule, "on_resume": on_resume})


@dataclass
class DataConfig:
    name: str = MISSING  # the builder in trainlab.data.datasets: cifar10, mnist, fashion_mnist, folder, shapes
    root: str = setting(on_resume=True)
    download: bool = MISSING
    image_size: Optional[int] = MISSING  # side of the square images the model sees; null: data=folder learns it
    mean: List[float] = MISSING  # per-channel statistics for the normalize step
    std: List[float] = MISSING
    batch_size: int = setting(at_least(1))
    eval_batch_size: int = setting(at_least(1), on_resume=True)
    num_workers: int = setting(at_least(0), on_resume=True)
    shuffle: bool = MISSING
    drop_last: bool = MISSING
    pin_memory: bool = setting(on_resume=True)
    val_split: float = setting(Rule(lambda v: 0 <= v < 1, "from 0 (no validation split) to below 1"))  # share of train held out for validation where the data set has no such split
    split_seed: int = MISSING
    subset: Optional[int] = setting(at_least(1, null=True))  # train on this many images (a fixed random choice); null: all
    val_subset: Optional[int] = setting(at_least(1, null=True))
    test_subset: Optional[int] = setting(at_least(1, null=True))
    bad_images: str = setting(one_of("fail", "skip"))  # fail or skip: what a file that cannot be decoded does
    max_pixels: int = setting(at_least(1))  # an image file with more pixels is refused before it is decoded
    # folder only
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    test_dir: Optional[str] = None
    split: Optional[float] = field(default=None, metadata={"rule": Rule(lambda v: v is None or 0 < v < 1, "between 0 and 1, or null")})  # fraction of root's images held out for testing, when root has no train/test dirs
    # shapes only
    num_train: Optional[int] = None
    num_test: Optional[int] = None


@dataclass
class TransformConfig:
    # Each step is a mapping: `type` and that step's keys, checked against trainlab.data.transforms.STEPS before any data
    # is read. Plain mappings rather than one schema of every key, so `--cfg job` shows just what each step sets.
    train: List[Dict[str, Any]] = MISSING
    test: List[Dict[str, Any]] = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    blocks: Optional[List[Dict[str, Any]]] = None  # `type` and that block's keys (trainlab.models.blocks.BLOCKS)
    arch: Optional[str] = None  # model=torchvision or model=timm: an architecture that library lists
    library: Optional[str] = field(default=None, metadata={"rule": Rule(lambda v: v in (None, "torchvision", "timm"), "torchvision or timm")})  # whose arch
    small_input: Optional[bool] = None  # model=torchvision: a ResNet stem for 32x32 images
    pretrained: Optional[bool] = None  # model=torchvision or timm: start from the library's default weights
    weights: Optional[str] = None  # a weight file a new run starts from (trainlab/models/weights.py)
    freeze: Optional[List[str]] = None  # module names whose parameters do not train, or [backbone]
    head_lr_scale: Optional[float] = field(default=None, metadata={"rule": above(0, ", or null")})  # the head's rate: optimizer.lr times this


# Optimizers, schedulers and losses are instantiated by `_target_`; one schema per option, so each one's own keys
# are checked. A new option may come without a schema: then only its `_target_` is checked, when it is built.
@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True  # the model's parameters are given at run time
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    groups: List[Dict[str, Any]] = MISSING  # parameter groups with their own settings (trainlab/training/optim.py)


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING
    groups: List[Dict[str, Any]] = MISSING  # parameter groups with their own settings (trainlab/training/optim.py)


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"


@dataclass
class MuonConfig:
    _target_: str = "trainlab.training.muon.Muon"
    _partial_: bool = True
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    ns_steps: int = setting(at_least(1))  # Newton-Schulz steps a step
    normalize: bool = MISSING
    groups: List[Dict[str, Any]] = MISSING  # parameter groups with their own settings (trainlab/training/optim.py)


@dataclass
class SchedulerConfig:
    _target_: str = MISSING  # each option's class
    _partial_: bool = True  # the optimizer is given at run time
    interval: str = setting(one_of("epoch", "step"))  # when the scheduler steps
    warmup_steps: int = setting(Rule(lambda v: v >= 0, "0 (none) or more"))  # a linear warm-up in front; 0: none


@dataclass
class StepLRConfig(SchedulerConfig):
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    step_size: int = setting(at_least(1))  # 0 would divide by 0 after the first epoch
    gamma: float = MISSING


@dataclass
class CosineConfig(SchedulerConfig):
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = setting(at_least(1))
    eta_min: float = MISSING


@dataclass
class OneCycleConfig(SchedulerConfig):
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    max_lr: float = MISSING
    pct_start: float = MISSING
    total_steps: Optional[int] = setting(at_least(1, null=True))  # null: the whole run's steps, filled in at run time


@dataclass
class PiecewiseConfig(SchedulerConfig):
    _target_: str = "trainlab.training.schedule.PiecewiseLinearLR"
    points: List[Any] = MISSING  # [[fraction of the run, factor of the rate], ...], fractions 0 to 1
    total_steps: Optional[int] = setting(at_least(1, null=True))  # null: the whole run's steps


@dataclass
class NoSchedulerConfig:
    warmup_steps: int = setting(Rule(lambda v: v >= 0, "0 (none) or more"))


@dataclass
class CrossEntropyConfig:
    _target_: str = "torch.nn.CrossEntropyLoss"
    label_smoothing: float = MISSING


@dataclass
class OneHotLossConfig:
    _target_: str = MISSING  # trainlab.training.losses.SoftmaxMSELoss or SoftmaxL1Loss


@dataclass
class TrainerConfig:
    epochs: int = setting(at_least(1), on_resume=True)
    device: str = setting(on_resume=True)  # auto, cpu, cuda, cuda:N
    seed: int = setting(Rule(lambda v: 0 <= v < 2**32, "from 0 to 2**32 - 1"))
    deterministic: bool = MISSING
    log_every_n_steps: int = setting(at_least(1), on_resume=True)
    progress_bar: bool = setting(on_resume=True)
    checkpoint: bool = MISSING
    checkpoint_every_n_steps: int = setting(Rule(lambda v: v >= 0, "0 (epoch ends only) or more"), on_resume=True)
    resume: str = setting(on_resume=True)  # auto, never, or a run folder or checkpoint file
    nonfinite: str = setting(one_of("stop", "skip"))
    clip_grad_norm: Optional[float] = setting(above(0, ", or null (off)"))  # before each update
    accumulate_grad_batches: int = setting(at_least(1))  # batches whose gradients one optimizer update applies
    log_graph: bool = MISSING
    log_images: bool = MISSING
    data_path: str = setting(one_of("auto", "resident", "loader"))
    precision: str = setting(one_of("fp32", "bf16", "fp16", "auto"))
    channels_last: Optional[bool] = MISSING  # null: chosen by device and precision
    compile: bool = setting(on_resume=True)
    compile_mode: str = setting(one_of("default", "reduce-overhead", "max-autotune"), on_resume=True)  # torch.compile's
    cuda_graphs: bool = setting(on_resume=True)
    average: str = setting(one_of("none", "ema", "lookahead"))  # weight averaging (trainlab/training/averaging.py)
    average_every: int = setting(at_least(1))  # steps between updates of the average
    average_decay: float = setting(Rule(lambda v: 0 <= v < 1, "from 0 to below 1"))  # the old average's weight
    average_ramp: float = setting(at_least(0))  # decay x (step / steps) ** ramp; 0: constant
    tta: str = setting(one_of("none", "flip", "flip_translate"))  # test-time augmentation: the views averaged
    monitor: str = setting(one_of("val/acc", "val/loss"))  # what chooses best.pt
    test_every_epoch: bool = setting(on_resume=True)
    early_stopping_patience: Optional[int] = setting(Rule(lambda v: v is None or v >= 1, "at least 1, or null (off)"), on_resume=True)
    max_minutes: Optional[float] = setting(above(0, ", or null"), on_resume=True)  # null: no time budget


@dataclass
class TensorBoardLoggerConfig:
    pass


@dataclass
class MlflowLoggerConfig:
    # a store (sqlite, a database) or a server; no scheme that would load a plugin by name
    tracking_uri: str = setting(Rule(lambda v: re.match(r"(sqlite|postgresql|mysql|mssql|https?|file)(\+\w+)?:", v)
                                     is not None, "a sqlite:///, postgresql://, mysql://, http(s):// or file: URI"))
    experiment: Optional[str] = None
    artifact_location: Optional[str] = None
    log_checkpoint: str = setting(one_of("best", "last", "all", "none"))


@dataclass
class WandbLoggerConfig:
    project: str = MISSING
    entity: Optional[str] = None
    mode: str = setting(one_of("offline", "online", "disabled"))
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    log_checkpoint: str = setting(one_of("best", "last", "all", "none"))


@dataclass
class LoggerConfig:
    """The trackers chosen (logger=[tensorboard,mlflow]): each present key is one (trainlab/runs/trackers.py)."""
    tensorboard: Optional[TensorBoardLoggerConfig] = None
    mlflow: Optional[MlflowLoggerConfig] = None
    wandb: Optional[WandbLoggerConfig] = None


@dataclass
class Config:
    data: DataConfig = MISSING
    transform: TransformConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)


SCHEMAS = {
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig, "muon": MuonConfig},
    "scheduler": {"none": NoSchedulerConfig, "step": StepLRConfig, "cosine": CosineConfig, "onecycle": OneCycleConfig,
                  "piecewise": PiecewiseConfig},
    "loss": {"cross_entropy": CrossEntropyConfig, "one_hot": OneHotLossConfig},
}


def register_configs() -> None:
    """Put the schemas where conf/ refers to them: `config_schema` at the top, `<group>_<name>_schema` for options.

    Stored outside the groups so that `--help` lists only the options a user picks.
    """
    # conf/config.yaml's run folder: a new one named by the start time, or the resumed run's own
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver("config_subdir", _config_subdir, replace=True)
    OmegaConf.register_new_resolver("sweep_job_folder", _sweep_job_folder, replace=True)  # hydra.sweep.subdir
    OmegaConf.register_new_resolver("oc.env", _env, replace=True)  # OmegaConf's, on a leash: see _env
    OmegaConf.register_new_resolver("settings_help", _settings_help, replace=True)  # --help's settings
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(name=f"{group}_{name}_schema", node=node)


ENV_ALLOW = "TRAINLAB_ENV_ALLOW"
_NO_DEFAULT = object()


def env_readable(name: str) -> bool:
    """Whether a config may read the environment variable `name`: TRAINLAB_* and those the user lists in
    TRAINLAB_ENV_ALLOW. A config file may come from someone else, and what it reads is kept in run.log's lines, the
    .hydra/ record and every checkpoint: ${oc.env:AWS_SECRET_ACCESS_KEY} would copy a secret into all of them."""
    from trainlab.config.hydra_policy import named_in_env

    return name.startswith("TRAINLAB_") or named_in_env(ENV_ALLOW, name)


def _env(key: str, default=_NO_DEFAULT):
    """${oc.env:NAME} and ${oc.env:NAME,default}, as OmegaConf's own, for the variables env_readable allows."""
    from omegaconf.resolvers import oc

    if not env_readable(str(key)):
        raise EnvRefused(f"${{oc.env:{key}}}: a config reads only environment variables named TRAINLAB_* or listed "
                         f"in {ENV_ALLOW}; rename the variable, or run with {ENV_ALLOW}={key}")
    return oc.env(key) if default is _NO_DEFAULT else oc.env(key, default)


def _run_dir(resume: str, *, _root_) -> str:
    """hydra.run.dir: the folder of the run trainer.resume continues, else outputs/runs/<start time>_<what the
    command set> (run_folder_name; under torchrun the same in every process of a node). Where the resume finds
    nothing, the run says so, from a new folder that it leaves."""
    from trainlab.launch import launch_stamp, run_folder_name
    from trainlab.runs.resume import resume_folder

    folder = resume_folder(resume)
    if folder is not None:
        return str(folder)
    overrides = OmegaConf.to_container(_root_.hydra.overrides.task) if "hydra" in _root_ else []
    global _stamp
    _stamp = _stamp or launch_stamp()  # one per process: the folder the check looks at is the folder Hydra makes
    return f"outputs/runs/{run_folder_name(_stamp, overrides)}"


_stamp = None  # the time this process first named a new run folder


def _config_subdir(output_dir: str):
    """hydra.output_subdir: .hydra for a new run's folder only: a run folder's own .hydra/ keeps the config it was made
    with, one made in a notebook gets none from the command that continues it, and a command refused there (another
    run's folder) leaves it as it was. Written by the first process of a data-parallel run alone (Hydra runs the task
    in every process of torchrun and of a submitit job)."""
    from trainlab.launch import first_process
    from trainlab.runs.resume import run_traces

    folder = Path(output_dir)
    if not first_process() or (folder / ".hydra").exists() or (folder / ".hydra").is_symlink() or run_traces(folder):
        return None
    return ".hydra"


def _settings_help(*, _root_) -> str:
    from trainlab.config.help import settings_help

    return settings_help(_root_)


def _sweep_job_folder(*, _root_) -> str:
    """hydra.sweep.subdir: the job's number and the values its sweep gave it (trainlab.launch.job_folder_name)."""
    from trainlab.launch import sweep_job_folder  # imports torch: only when a sweep names a job folder

    return sweep_job_folder(_root_=_root_)


PARTS = {"data": DataConfig, "trainer": TrainerConfig}  # the parts whose fields declare their rules


def on_resume_keys() -> tuple:
    """The settings a resumed run may take from the command (`setting(on_resume=True)`): how it goes on."""
    return tuple(f"{part}.{f.name}" for part, schema in PARTS.items() for f in dataclasses.fields(schema)
                 if f.metadata.get("on_resume"))


def check_values(cfg: DictConfig) -> None:
    """Values the schema's types allow but a run cannot use: reported before any data is read. Each field's own rule
    is declared beside it (setting()); here, the rules that read several settings."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise TrainlabError(f"{missing[0]} is not set: add {missing[0]}=... to the command")
    rules = [(f"{part}.{f.name}", cfg[part][f.name], f.metadata["rule"]) for part in cfg
             for f in _ruled_fields(cfg, part) if cfg[part].get(f.name) is not None]
    rules += [(f"logger.{name}.{f.name}", tracker[f.name], f.metadata["rule"])  # each chosen tracker's own rules
              for name, tracker in (cfg.get("logger") or {}).items() if isinstance(tracker, DictConfig)
              for f in _ruled_fields(cfg.logger, name)]
    d = cfg.data
    image_size = Rule(lambda v: v >= 1 if v is not None else d.name == "folder",
                      "at least 1 (null, the images' own size, is for data=folder)")
    rules.append(("data.image_size", d.image_size, image_size))
    if "lr" in cfg.optimizer:  # a float32 holds up to 3.4e38
        rules.append(("optimizer.lr", cfg.optimizer.lr, Rule(lambda v: 0 < v < 3.4e38,
                                                             "greater than 0 (and below 3.4e38)")))
    if d.name == "shapes":  # drawn images: a shape needs room, and each split at least an image
        rules += [("data.image_size", d.image_size, Rule(lambda v: v >= 8, "at least 8 for data=shapes")),
                  ("data.num_train", d.num_train, at_least(1)), ("data.num_test", d.num_test, at_least(1))]
    for key, value, rule in rules:
        if not rule.ok(value):
            raise TrainlabError(f"{key}={value} cannot work: it must be {rule.should}")


def _ruled_fields(cfg: DictConfig, part: str) -> list:
    """The fields of a part's schema that declare a rule (setting(rule))."""
    schema = _schema_of(cfg, part)
    return [f for f in dataclasses.fields(schema) if f.metadata.get("rule")] if schema is not None else []


def _schema_of(cfg: DictConfig, part: str):
    """The schema a part of the config was composed with, or, for a plain one (a checkpoint's, resumed), the schema
    of the option whose `_target_` it names; None for a part without one (a user's own optimizer file)."""
    if not isinstance(cfg[part], DictConfig):
        return None
    schema = OmegaConf.get_type(cfg, part)
    if dataclasses.is_dataclass(schema):
        return schema
    options = SCHEMAS.get(part, {}).values()
    target = cfg[part].get("_target_")
    return next((o for o in options if _default(o, "_target_") == target), PARTS.get(part))


def _default(schema, name: str):
    found = [f.default for f in dataclasses.fields(schema) if f.name == name]
    return found[0] if found else None


TYPE_NAMES = {int: "an integer", float: "a number", list: "a list", bool: "true or false", str: "a string",
              dict: "a mapping"}


def check_keys(label: str, given: dict, allowed: dict, required: int = 0) -> dict:
    """Check a step's or block's keys (all but `type`) against `allowed`, {key: type}, whose first `required` keys
    must be set; -> the keys that are set, as plain Python values. `label` names the entry in errors."""
    values = {k: v for k, v in given.items() if k != "type" and v is not None}
    for key, value in values.items():
        if key not in allowed:
            raise TrainlabError(f"{label}: '{key}' does not apply; it takes {', '.join(allowed) or 'no keys'}")
        kinds = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        accepted = kinds + ((int,) if float in kinds else ())  # 1 is a fine learning rate
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, accepted):
            names = " or ".join(TYPE_NAMES[k] for k in kinds)
            raise TrainlabError(f"{label}: {key} must be {names}, not {value!r}")
    for key in list(allowed)[:required]:
        if key not in values:
            raise TrainlabError(f"{label}: set {key}")
    return values
