"""Recipes: YAML files that say what to run, as a typed model validated once before any work.

A recipe has fixed sections, one pydantic model each (``ProtocolConfig``, ``FeaturesConfig``,
``FinetuneConfig``, ``TrainingConfig``, ``DataConfig``, ``OutputConfig``) plus four plugin sections
(``corpus``, ``upstream``, ``aggregator``, ``classifier``: a ``name`` and that plugin's own constructor
options, checked against its signature). Every value's type and valid range is declared once, here;
``ser schema`` prints the JSON Schema. Each consumer receives only the section(s) it reads.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ser_plugins.errors import UserError
from ser_plugins.plugins import registry
from ser_plugins.plugins.contracts import FINETUNE_MODES as FINETUNE_MODES  # re-exported: one of the enumerations
from ser_plugins.plugins.contracts import FinetuneMode

_log = logging.getLogger(__name__)


class RecipeError(UserError, ValueError):
    """A recipe that cannot run; the message names the key."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parse YAML safely (no object construction), with scientific-notation floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


# --- the enumerations: one source of truth each --------------------------------------------------
ProtocolName = Literal["session", "speaker", "folds", "split", "cross_corpus"]
DevStrategy = Literal["auto", "none", "speaker", "random", "split"]
LayerUse = Literal["last", "weighted_sum"]  # or an integer layer index
Normalization = Literal["global", "speaker", "corpus"]  # or null / "none"
Optimizer = Literal["adam", "adamw", "sgd"]
Scheduler = Literal["none", "linear", "cosine"]
Precision = Literal["fp32", "bf16", "fp16"]
NanPolicy = Literal["skip", "stop"]
Selection = Literal["last", "dev_loss", "dev_ua", "dev_macro_f1", "dev_ccc"]  # which epoch's weights a fold keeps
TaskKind = Literal["classification", "regression", "multitask"]
RegressionLossName = Literal["ccc", "mse", "l1"]
_CLASS_SELECTIONS = ("dev_ua", "dev_macro_f1")  # selections that read the dev set's class predictions
CacheDtype = Literal["float16", "float32"]

PROTOCOLS: Tuple[str, ...] = get_args(ProtocolName)
DEV_STRATEGIES: Tuple[str, ...] = get_args(DevStrategy)
LAYER_USES: Tuple[str, ...] = get_args(LayerUse)
NORMALIZATIONS: Tuple[str, ...] = get_args(Normalization)
# corpus: an unseen (cross-corpus test) corpus is standardised with its own statistics
TRANSDUCTIVE_NORMALIZATIONS: Tuple[str, ...] = ("speaker", "corpus")
OPTIMIZERS: Tuple[str, ...] = get_args(Optimizer)
SCHEDULERS: Tuple[str, ...] = get_args(Scheduler)
PRECISIONS: Tuple[str, ...] = get_args(Precision)
NAN_POLICIES: Tuple[str, ...] = get_args(NanPolicy)
SELECTIONS: Tuple[str, ...] = get_args(Selection)
CACHE_DTYPES: Tuple[str, ...] = get_args(CacheDtype)
PLUGIN_KINDS: Tuple[str, ...] = tuple(registry.RECIPE_KINDS)  # corpus/upstream/aggregator/classifier sections

_MAX_STEPS = 10**9
_MAX_SECONDS = 10**6


def _finite(**bounds) -> Any:
    """A float field that must be finite, within ``bounds`` (pydantic ge/gt/le/lt)."""
    return Field(allow_inf_nan=False, **bounds)


class Section(BaseModel):
    """Base of the recipe's sections: strict types (no ``"3"`` for 3, no ``true`` for 1), no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class TaskConfig(Section):
    """What the head predicts: classes (the default), continuous targets (``regression``), or both (``multitask``).

    ``task: regression`` is short for ``task: {type: regression}``. ``targets`` names the corpus's
    attributes to predict (default arousal, valence, dominance); ``loss`` is the regression loss
    (``ccc``: 1 - CCC, ``mse``, ``l1``), averaged over targets with ``target_weights``; a multitask
    head's loss is ``classification_weight * CE + regression_weight * regression``. ``standardize``
    fits each target's mean and standard deviation on the training fold: the head learns
    standardised targets and its outputs are mapped back to the corpus's scale.
    """

    type: TaskKind = "classification"
    targets: Optional[List[str]] = None
    loss: RegressionLossName = "ccc"
    target_weights: Optional[List[float]] = None
    classification_weight: float = _finite(default=1.0, ge=0, le=1e6)
    regression_weight: float = _finite(default=1.0, ge=0, le=1e6)
    standardize: bool = False

    @model_validator(mode="after")
    def _targets(self) -> "TaskConfig":
        if self.type == "classification":
            if self.targets:
                raise ValueError("task.targets needs task.type: regression or multitask")
            return self
        if not self.targets:
            self.targets = ["arousal", "valence", "dominance"]
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"task.targets names a target twice: {self.targets}")
        w = self.target_weights
        if w is not None:
            if len(w) != len(self.targets):
                raise ValueError(f"task.target_weights has {len(w)} weights for {len(self.targets)} targets")
            if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(f"task.target_weights must be finite, >= 0 and not all 0, got {w}")
        return self

    @property
    def has_classes(self) -> bool:
        """True when the head predicts classes."""
        return self.type != "regression"

    @property
    def has_targets(self) -> bool:
        """True when the head predicts continuous targets."""
        return self.type != "classification"


class ProtocolConfig(Section):
    """Which utterances train, pick the checkpoint (dev) and test in each fold."""

    name: Optional[ProtocolName] = None
    # auto: a speaker-disjoint dev set when training uses one (select, patience, refit), else none
    dev: DevStrategy = "auto"
    dev_fraction: float = _finite(default=0.1, gt=0, lt=1)
    num_folds: Optional[int] = Field(default=None, ge=2, le=10_000)
    # cross_corpus: train (and dev) on these corpora of a multi-corpus recipe, test on those
    train: Optional[List[str]] = None
    test: Optional[List[str]] = None

    @field_validator("train", "test", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cross_corpus(self) -> "ProtocolConfig":
        if self.name == "cross_corpus":
            if not self.train or not self.test:
                raise ValueError("protocol cross_corpus needs protocol.train and protocol.test (corpus names)")
            both = sorted(set(self.train) & set(self.test))
            if both and set(self.train) != set(self.test):
                raise ValueError(
                    f"protocol cross_corpus: {both} in both protocol.train and protocol.test; the same corpora "
                    "on both sides (the matrix's diagonal: within-corpus, speaker-independent folds) or none"
                )
        elif self.train or self.test:
            raise ValueError("protocol.train / protocol.test need protocol.name: cross_corpus")
        return self


class FeaturesConfig(Section):
    """How the head reads the upstream: layer use, projection, normalisation, stored layers."""

    layer: Union[LayerUse, int] = "last"
    projection: Optional[int] = Field(default=None, ge=1, le=1_000_000)
    normalize: Optional[Normalization] = "global"
    keep_layers: Optional[List[int]] = None

    @field_validator("normalize", mode="before")
    @classmethod
    def _none_is_null(cls, value: Any) -> Any:
        return None if value == "none" else value

    @property
    def transductive(self) -> bool:
        """True when test statistics come from the test speakers' own (unlabelled) audio."""
        return self.normalize in TRANSDUCTIVE_NORMALIZATIONS


class FinetuneConfig(Section):
    """Whether and how the upstream trains."""

    mode: FinetuneMode = "frozen"
    top_n: Optional[int] = Field(default=None, ge=1, le=10_000)
    upstream_lr: float = _finite(default=5e-5, gt=0, le=10)
    frozen_warmup_steps: int = Field(default=0, ge=0, le=_MAX_STEPS)
    layer_decay: Optional[float] = _finite(default=None, gt=0, le=1)
    gradient_checkpointing: bool = False
    # mode lora / adapter (parameter-efficient; docs/self_supervised.md): null keys take the preset's
    # value, else the defaults (rank 16, alpha 32, dropout 0.05, the attention projections, adapters of 64)
    lora_rank: Optional[int] = Field(default=None, ge=1, le=4096)
    lora_alpha: Optional[float] = _finite(default=None, gt=0, le=1e6)
    lora_dropout: Optional[float] = _finite(default=None, ge=0, lt=1)
    lora_targets: Optional[Union[Literal["attention", "feed_forward"], List[str]]] = None
    adapter_dim: Optional[int] = Field(default=None, ge=1, le=65536)
    peft_preset: Optional[Literal["peft_ser"]] = None

    @model_validator(mode="after")
    def _peft_keys(self) -> "FinetuneConfig":
        peft_keys = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "adapter_dim", "peft_preset")
        given = [k for k in peft_keys if getattr(self, k) is not None]
        if given and self.mode not in ("lora", "adapter"):
            raise ValueError(f"finetune.{given[0]} needs finetune.mode: lora or adapter")
        return self

    def peft_options(self) -> Dict[str, Any]:
        """The settings a ``lora`` / ``adapter`` upstream reads (``Upstream.peft_options``): the keys set."""
        names = {
            "lora_rank": "rank",
            "lora_alpha": "alpha",
            "lora_dropout": "dropout",
            "lora_targets": "targets",
            "adapter_dim": "adapter_dim",
            "peft_preset": "preset",
        }
        options = {new: getattr(self, old) for old, new in names.items() if getattr(self, old) is not None}
        if options.get("targets") == "attention":
            options.pop("targets")
        return options


class TrainingConfig(Section):
    """Optimisation of one fold: steps, batches, optimiser, schedule, early stopping, precision."""

    max_steps: Optional[int] = Field(default=2500, ge=1, le=_MAX_STEPS)
    epochs: Optional[int] = Field(default=None, ge=1, le=1_000_000)
    batch_size: int = Field(default=32, ge=1, le=1_000_000)
    max_batch_seconds: Optional[float] = _finite(default=None, gt=0, le=_MAX_SECONDS)
    optimizer: Optimizer = "adamw"
    lr: float = _finite(default=1e-2, gt=0, le=10)
    weight_decay: float = _finite(default=1e-4, ge=0, le=10)
    scheduler: Scheduler = "cosine"
    warmup_steps: int = Field(default=0, ge=0, le=_MAX_STEPS)
    grad_accum: int = Field(default=1, ge=1, le=100_000)
    grad_clip: Optional[float] = _finite(default=5.0, gt=0, le=1e6)
    select: Selection = "last"
    patience: Optional[int] = Field(default=None, ge=1, le=1_000_000)
    refit: bool = False  # after dev chose the epoch: train again on train + dev for as long, keep that model
    class_weights: bool = False
    balanced_sampling: bool = False
    max_duration: Optional[float] = _finite(default=None, gt=0, le=_MAX_SECONDS)
    precision: Precision = "fp32"
    device: str = "auto"
    nan_policy: NanPolicy = "skip"
    max_nan_steps: int = Field(default=20, ge=0, le=_MAX_STEPS)
    eval_batch_size: Optional[int] = Field(default=None, ge=1, le=1_000_000)
    # torch intra-op threads while a fold trains; null: 1 for a head on precomputed features (measured
    # faster: benchmarks/bench_head_speed.py), else the cores shared among this run's fold jobs
    threads: Optional[int] = Field(default=None, ge=1, le=4096)

    @model_validator(mode="after")
    def _has_a_length(self) -> "TrainingConfig":
        if self.max_steps is None and self.epochs is None:
            raise ValueError("training needs a length: set training.max_steps or training.epochs (or both)")
        if self.select == "last" and self.patience is not None:
            raise ValueError("training.patience (early stopping) needs training.select: dev_loss or dev_ua")
        if self.refit and self.select == "last":
            raise ValueError("training.refit needs a choice made on the dev set: training.select dev_loss or dev_ua")
        return self

    @property
    def uses_dev(self) -> bool:
        """True when training reads a dev set: it selects the epoch, stops early or refits on it."""
        return self.select != "last" or self.patience is not None or self.refit

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda", "mps") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ValueError(f"{device!r} is not auto, cpu, cuda, cuda:N or mps")
        return device


class DataConfig(Section):
    """Audio and feature handling: strictness, precomputation, extraction batches, the feature cache, RAM budget."""

    strict: bool = False
    precompute: bool = True
    extract_batch_seconds: float = _finite(default=64, gt=0, le=_MAX_SECONDS)
    num_threads: Optional[int] = Field(default=None, ge=1, le=4096)
    cache_dir: Optional[str] = None
    cache_dtype: CacheDtype = "float16"
    max_ram_gb: Optional[float] = _finite(default=None, gt=0, le=1_000_000)  # null: half the available RAM
    num_workers: Optional[int] = Field(default=None, ge=0, le=256)  # null: min(4, CPUs) on streamed passes


# keys that decide how a run executes, never what it computes: --resume accepts a change of them
# (a run started in RAM may continue streamed on a smaller machine, with more or fewer workers)
EXECUTION_ONLY_KEYS: Dict[str, Tuple[str, ...]] = {
    "data": ("max_ram_gb", "num_workers"),
    "output": ("checkpoint_interval",),
}


class OutputConfig(Section):
    """Where and what the run writes."""

    dir: Optional[str] = None
    tensorboard: bool = True
    save_checkpoints: bool = True
    # seconds between a fold's resume checkpoints (last_state.pt); the first epoch and each new best are
    # always saved; 0: every epoch. A kill loses at most this much training, never a finished fold
    checkpoint_interval: float = _finite(default=10.0, ge=0, le=_MAX_SECONDS)


class LauncherConfig(Section):
    """Resources one recipe x fold job asks a launcher for (``ser grid --launcher``); they never change results."""

    gpus: Optional[int] = Field(default=None, ge=0, le=1024)
    cpus: Optional[int] = Field(default=None, ge=1, le=4096)
    mem_gb: Optional[float] = _finite(default=None, gt=0, le=1_000_000)
    time_min: Optional[int] = Field(default=None, ge=1, le=10**7)
    partition: Optional[str] = None


class PluginSection(BaseModel):
    """A plugin section: the plugin's ``name`` and its constructor options (checked against its signature).

    (A discovered entry point is a ``ser_plugins.plugins.registry.PluginSpec``.)
    """

    model_config = ConfigDict(frozen=True)

    name: str
    options: Dict[str, Any] = Field(default_factory=dict)

    def to_yaml_value(self) -> Dict[str, Any]:
        """The recipe form: ``{name: ..., option: value, ...}``."""
        return {"name": self.name, **copy.deepcopy(self.options)}


#: the old name of ``PluginSection``, kept for existing imports (``PluginSpec`` now means the registry's)
PluginSpec = PluginSection


SECTIONS: Dict[str, Type[Section]] = {
    "task": TaskConfig,
    "protocol": ProtocolConfig,
    "features": FeaturesConfig,
    "finetune": FinetuneConfig,
    "training": TrainingConfig,
    "data": DataConfig,
    "output": OutputConfig,
    "launcher": LauncherConfig,
}
TOP_LEVEL: Dict[str, type] = {"name": str, "seed": int, "description": str}


class Recipe(BaseModel):
    """A whole, validated recipe. Build it with ``load_recipe``; read it by section (``recipe.training.lr``)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    name: str = "run"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    description: Optional[str] = None
    corpus: PluginSection
    upstream: PluginSection
    aggregator: PluginSection
    classifier: PluginSection
    task: TaskConfig = Field(default_factory=TaskConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        f, ft = self.features, self.finetune
        if ft.mode == "top_n" and not ft.top_n:
            raise _Refused("finetune.top_n must be set (>= 1) when finetune.mode is 'top_n'")
        if "normalize" not in f.model_fields_set and (ft.mode != "frozen" or not self.data.precompute):
            f.normalize = None  # the default (global) standardises precomputed frozen features only
        if f.normalize and ft.mode != "frozen":
            raise _Refused(
                f"features.normalize: {f.normalize!r} needs a frozen upstream (its statistics are computed "
                "once from the upstream's features); set finetune.mode: frozen or drop it"
            )
        if f.normalize and not self.data.precompute:
            raise _Refused(f"features.normalize: {f.normalize!r} needs data.precompute: true")
        task, t = self.task, self.training
        if not task.has_classes:
            if t.select in _CLASS_SELECTIONS:
                raise _Refused(
                    f"training.select: {t.select} reads class predictions, but task.type is regression; "
                    "use dev_ccc, dev_loss or last"
                )
            for key in ("class_weights", "balanced_sampling"):
                if getattr(t, key):
                    raise _Refused(f"training.{key} needs classes, but task.type is regression")
        if t.select == "dev_ccc" and not task.has_targets:
            raise _Refused("training.select: dev_ccc needs continuous targets: task.type regression or multitask")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """The recipe as plain data, in the YAML form (plugin sections flattened)."""
        out: Dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.description is not None:
            out["description"] = self.description
        for kind in PLUGIN_KINDS:
            out[kind] = getattr(self, kind).to_yaml_value()
        for section in SECTIONS:
            out[section] = getattr(self, section).model_dump()
        return out


class _Refused(ValueError):
    """A cross-section rule broken (raised inside validation, re-raised as RecipeError)."""


# --- loading -----------------------------------------------------------------------------------
def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a recipe file with a safe loader (never executes tags)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    return data


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML: ``3``, ``1e-4``, ``[1, 2]``, ``null``).

    ``-o upstream=NAME`` replaces the whole plugin section; ``-o upstream.name=NAME`` keeps its options.
    """
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str) and part in PLUGIN_KINDS:
                node[part] = {"name": node[part]}
            elif isinstance(node.get(part), str) and part == "task" and node is data:
                node[part] = {"type": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def _plugin_spec(kind: str, value: Any) -> PluginSection:
    if isinstance(value, str):
        return PluginSection(name=value)
    if not isinstance(value, dict) or "name" not in value:
        raise RecipeError(f"{kind}: expected a plugin name or a mapping with a 'name' key")
    if not isinstance(value["name"], str):
        raise RecipeError(f"{kind}.name: expected str, got {type(value['name']).__name__}")
    return PluginSection(name=value["name"], options={k: v for k, v in value.items() if k != "name"})


_TYPE_WORDS = {
    "int_type": "int",
    "float_type": "int or float",
    "bool_type": "bool",
    "string_type": "str",
    "list_type": "list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}
_BOUND_WORDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _field_range(model: Type[BaseModel], key: str) -> str:
    """The declared range of a numeric field, e.g. ``>= 1 and <= 1000000``, for messages."""
    info = model.model_fields.get(key)
    if info is None:
        return ""
    parts = []
    for meta in info.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{word} {getattr(meta, attr)}")
    return " and ".join(parts)


def _type_name(value: Any) -> str:
    return "a boolean" if isinstance(value, bool) else type(value).__name__


def _message(where: str, model: Type[BaseModel], error: Mapping[str, Any], given: Dict[str, Any]) -> str:
    """One user-facing sentence for a pydantic error on ``where`` (``section.key``)."""
    kind = error["type"]
    key = where.split(".")[-1]
    value = given.get(key, error.get("input"))
    allowed = _field_range(model, key)
    if kind == "extra_forbidden":
        keys = ", ".join(model.model_fields)
        section = where.rsplit(".", 1)[0]
        return f"unknown key {where}{_did_you_mean(key, model.model_fields)}; {section} keys: {keys}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "").replace("'", "").replace(" or ", ", ")
        return f"{where}: {value!r} is not one of {expected}"
    if kind in _TYPE_WORDS:
        if isinstance(value, bool):
            return f"{where}: expected {_TYPE_WORDS[kind]}, got a boolean ({value!r})"
        return f"{where}: expected {_TYPE_WORDS[kind]}, got {_type_name(value)} ({value!r})"
    if kind == "finite_number":
        return f"{where} must be a finite number ({allowed}), got {value!r}"
    if kind in _BOUND_WORDS:
        bound = list(error.get("ctx", {}).values())[0]
        rest = f" (valid range: {allowed})" if " and " in allowed else ""
        return f"{where} must be {_BOUND_WORDS[kind]} {bound}, got {value!r}{rest}"
    if kind == "value_error":
        return f"{where}: {str(error.get('ctx', {}).get('error', error['msg']))}"
    return f"{where}: {error['msg']} (got {value!r})"


def _validate_section(section: str, model: Type[BaseModel], given: Any) -> BaseModel:
    if given is None:
        given = {}
    if section == "task" and isinstance(given, str):  # task: regression
        given = {"type": given}
    if not isinstance(given, dict):
        raise RecipeError(f"{section}: expected a mapping, got {type(given).__name__}")
    try:
        return model(**given)
    except ValidationError as exc:
        errors = exc.errors()
        # a union (features.layer) reports one error per member: say what the field accepts instead
        first = errors[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        if section == "features" and key == "layer":
            raise RecipeError(
                f"features.layer: {given.get('layer')!r} is not 'last', 'weighted_sum' or a layer index"
            ) from None
        raise RecipeError(_message(f"{section}.{key}" if key else section, model, first, given)) from None


def resolve(data: Dict[str, Any], check_plugins: bool = True) -> Recipe:
    """Validate a recipe mapping and fill defaults; raise ``RecipeError`` naming the bad key.

    With ``check_plugins`` the plugin names are resolved through the registry (importing them)
    and their options are checked against the plugins' constructors.
    """
    if isinstance(data, Recipe):
        data = data.to_dict()
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of sections")
    known = set(TOP_LEVEL) | set(SECTIONS) | set(PLUGIN_KINDS)
    for key in data:
        if key not in known:
            raise RecipeError(
                f"unknown recipe key {key!r}{_did_you_mean(key, known)}; keys: {', '.join(sorted(known))}"
            )
    top: Dict[str, Any] = {}
    for key, typ in TOP_LEVEL.items():
        if key in data:
            value = data[key]
            if not isinstance(value, typ) or isinstance(value, bool):
                raise RecipeError(f"{key}: expected {typ.__name__}, got {_type_name(value)} ({value!r})")
            top[key] = value
    if "seed" in top and not 0 <= top["seed"] <= 2**32 - 1:
        raise RecipeError(f"seed must be >= 0 and <= {2**32 - 1}, got {top['seed']}")
    plugins: Dict[str, PluginSection] = {}
    for kind in PLUGIN_KINDS:
        if data.get(kind) is None:
            raise RecipeError(f"missing recipe section {kind!r}")
        plugins[kind] = _plugin_spec(kind, data[kind])
    sections = {name: _validate_section(name, model, data.get(name)) for name, model in SECTIONS.items()}
    try:
        fields: Dict[str, Any] = {**top, **plugins, **sections}  # disjoint keys
        recipe = Recipe(**fields)
    except ValidationError as exc:
        raise RecipeError(str(exc.errors()[0].get("ctx", {}).get("error", exc.errors()[0]["msg"]))) from None
    if check_plugins:
        check_plugin_options(recipe)
        recipe = apply_head_training_defaults(recipe)
    return resolve_dev(recipe)


def resolve_dev(recipe: Recipe) -> Recipe:
    """``protocol.dev: auto`` made concrete: ``speaker`` when training uses a dev set, else ``none``.

    A dev set costs training data (on IEMOCAP one training speaker in eight), so it is held out
    only when something reads it: ``training.select`` other than ``last``, ``patience`` or ``refit``.
    An explicit ``none`` with such a training setting is refused.
    """
    t, dev = recipe.training, recipe.protocol.dev
    if dev == "none" and t.uses_dev:
        needs = "select: " + t.select if t.select != "last" else ("patience" if t.patience is not None else "refit")
        raise RecipeError(
            f"protocol.dev: none leaves no dev set, but training.{needs} needs one; "
            "set protocol.dev: speaker (or random), or training.select: last"
        )
    if dev != "auto":
        return recipe
    protocol = recipe.protocol.model_copy(update={"dev": "speaker" if t.uses_dev else "none"})
    return recipe.model_copy(update={"protocol": protocol})


# a head's default for the first key applies only where the recipe leaves the second unset too
_DEFAULT_NEEDS = {"patience": "select", "refit": "select"}
_READS_DEV = ("select", "patience", "refit")  # head defaults left out when the recipe says protocol.dev: none


def head_training_defaults(recipe: Recipe) -> Dict[str, Dict[str, Any]]:
    """The ``training_defaults`` the recipe's classifier and aggregator declare, by ``"kind 'name'"``."""
    found: Dict[str, Dict[str, Any]] = {}
    for kind in ("classifier", "aggregator"):  # the aggregator's win on a shared key
        name = getattr(recipe, kind).name
        try:
            builder, _ = registry.load_builder(kind, name)
        except registry.PluginError as exc:
            raise RecipeError(f"{kind}: {exc}") from None
        declared = getattr(builder, "training_defaults", None) or {}
        if not isinstance(declared, Mapping):
            raise RecipeError(
                f"{kind} {name!r}: training_defaults must be a mapping of training keys, got {type(declared).__name__}"
            )
        if declared:
            found[f"{kind} {name!r}"] = dict(declared)
    return found


def apply_head_training_defaults(recipe: Recipe) -> Recipe:
    """Fill the training keys the recipe leaves unset from the head's ``training_defaults``.

    Frame-level networks train well under other settings than pooling heads (e.g. a smaller
    learning rate and dev-loss selection); a key the recipe sets always wins. Logged when applied.
    """
    given = recipe.training.model_fields_set
    applied: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for source, declared in head_training_defaults(recipe).items():
        unknown = [k for k in declared if k not in TrainingConfig.model_fields]
        if unknown:
            raise RecipeError(
                f"{source} declares training_defaults for unknown training key {unknown[0]!r}; "
                f"keys: {', '.join(TrainingConfig.model_fields)}"
            )
        for key, value in declared.items():
            if key not in given:
                applied[key], sources[key] = value, source
    for key, needs in _DEFAULT_NEEDS.items():
        if key in applied and needs in given:
            del applied[key]
    if recipe.protocol.dev == "none":  # the recipe chose to train on every speaker: no dev-based choice
        for key in _READS_DEV:
            applied.pop(key, None)
    if not applied:
        return recipe
    merged = {**recipe.training.model_dump(exclude_unset=True), **applied}
    try:
        training = _validate_section("training", TrainingConfig, merged)
    except RecipeError as exc:
        raise RecipeError(
            f"the head's training_defaults ({', '.join(sorted(set(sources.values())))}) do not fit this recipe: {exc}"
        ) from None
    _log.info(
        "training defaults of the head (keys the recipe leaves unset): %s",
        ", ".join(f"{k}={v!r} from {sources[k]}" for k, v in applied.items()),
    )
    return recipe.model_copy(update={"training": training})


def check_plugin_options(recipe: Recipe) -> None:
    """Resolve every plugin name and check its options; registry errors become RecipeErrors."""
    reserved = {"aggregator": ("input_dim",), "classifier": ("input_dim", "num_classes")}
    for kind in PLUGIN_KINDS:
        spec: PluginSection = getattr(recipe, kind)
        try:
            registry.check_kwargs(kind, spec.name, spec.options, reserved.get(kind, ()))
        except registry.PluginError as exc:
            raise RecipeError(f"{kind}: {exc}") from None


def load_recipe(
    source: Union[str, Path, Dict[str, Any], Recipe], overrides: Optional[List[str]] = None, check_plugins: bool = True
) -> Recipe:
    """Load (path, mapping or ``Recipe``), apply overrides, validate and fill defaults."""
    if isinstance(source, Recipe):
        data = source.to_dict()
    elif isinstance(source, (str, Path)):
        data = load_yaml(source)
    else:
        data = copy.deepcopy(source)
    return resolve(apply_overrides(data, overrides or []), check_plugins=check_plugins)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written to every run directory)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def recipe_differences(old: Any, new: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between a saved recipe and this one, as ``key: old -> new``."""
    if not isinstance(old, dict):
        return [f"{prefix or 'recipe'}: {old!r} -> {new!r}"] if old != new else []
    out: List[str] = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key), new.get(key)
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_differences(a, b, path)
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def resume_differences(saved: Any, recipe: Recipe) -> Optional[List[str]]:
    """What keeps ``recipe`` from resuming the run whose saved recipe (plain data) is ``saved``.

    ``None`` when the two compute the same: ``output.dir``, the ``launcher`` section and the
    ``EXECUTION_ONLY_KEYS`` are left out of the comparison. Otherwise the differing keys as
    ``key: old -> new`` (``recipe_differences``; empty when only a key's presence differs).
    """
    old, mine = copy.deepcopy(saved), recipe.to_dict()
    if isinstance(old, dict):
        old.get("output", {}).pop("dir", None)
        old.pop("launcher", None)  # resources never change results
    mine["output"].pop("dir", None)
    mine.pop("launcher", None)
    if isinstance(old, dict) and "task" not in old and mine.get("task") == TaskConfig().model_dump():
        mine.pop("task")  # a run saved before the task section existed: classification, as now
    for section, keys in EXECUTION_ONLY_KEYS.items():  # the RAM budget, the workers: same results
        for d in (old, mine):
            if isinstance(d, dict) and isinstance(d.get(section), dict):
                for key in keys:
                    d[section].pop(key, None)
    return None if old == mine else recipe_differences(old, mine)


def recipe_json_schema() -> Dict[str, Any]:
    """JSON Schema of a recipe (``ser schema``): editors use it to complete and check recipe files."""
    schema = Recipe.model_json_schema()
    plugin = {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": True,
            },
        ]
    }
    for kind in PLUGIN_KINDS:
        schema["properties"][kind] = {
            **plugin,
            "description": f"the {kind} plugin: a name, or a mapping of name and options",
        }
    schema["$defs"].pop("PluginSection", None)
    schema["title"] = "ser-plugins recipe"
    return schema


def numeric_fields() -> List[Tuple[str, str, Any]]:
    """Every numeric recipe key as ``(section, key, field info)``, with its declared range in the metadata.

    ``features.layer`` (a name or a layer index) is not listed: its index is checked against the
    upstream's layer count when the model is composed.
    """
    import typing

    def numeric(annotation: Any) -> bool:
        if annotation in (int, float):
            return True
        if typing.get_origin(annotation) is Union:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            return len(args) == 1 and numeric(args[0])
        return False

    return [
        (section, key, info)
        for section, model in SECTIONS.items()
        for key, info in model.model_fields.items()
        if numeric(info.annotation)
    ]
