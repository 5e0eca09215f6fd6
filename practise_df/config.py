"""The settings of one compression run, grouped by pipeline stage (as Accelerate's ``utils/dataclasses``).

:class:`CompressConfig` holds the model and run settings and one dataclass per stage. It is written
to and read from one JSON or YAML file (``run.json`` beside a run's outputs is that file;
``practise-df compress --config FILE`` reads one), and :data:`STAGE_SETTINGS` says which stage
owns each group: on ``--resume`` the settings of a finished stage may not change, those of the
stages still to run may.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from synth import get_preset
from synth.ood import photo_paths

from ._renamed import renamed_fields
from .corruptions import parse_corruptions, parse_severities
from .finetune import FinetuneConfig
from .guard import SIGNALS
from .latency import AUTO, CI_WIDTH, MAX_SECONDS, RUNTIMES, check_repeats
from .models import INTERPOLATIONS, PREPROCESSING, model_arguments
from .scoring import ESTIMATORS

__all__ = ['CompressConfig', 'ImagesConfig', 'SynthesisConfig', 'ScoringConfig', 'LatencyConfig',
           'FinetuneConfig', 'EvalConfig', 'RobustnessConfig', 'CardConfig', 'STAGE_SETTINGS']


@dataclass
class ImagesConfig:
    """The images the run learns from (stage ``images``)."""
    # None: synthesize from the teacher. Else an image folder, hf:NAME[:SPLIT], a save_to_disk folder or
    # crops:PHOTO.jpg / crops:DIR (random augmented crops of natural photos).
    source: Optional[str] = None
    num_images: int = 256
    heldout: Optional[int] = None  # held out to measure recoverability; default a quarter, at most 64
    # The images are real, representative data (the official few-shot setting): finetune with train-mode
    # BatchNorm. Synthesized and out-of-domain images keep the teacher's statistics.
    real: bool = False

    def __post_init__(self):
        if self.num_images < 2:
            raise ValueError(f'num_images must be at least 2 (some are held out to measure recoverability), '
                             f'got {self.num_images}.')
        if self.heldout is not None and self.heldout < 1:
            raise ValueError(f'heldout must be at least 1, got {self.heldout}.')
        if self.heldout is not None and self.heldout >= self.num_images:
            raise ValueError(f'heldout ({self.heldout}, --heldout-images) must be fewer than num_images '
                             f'({self.num_images}, --num-images): the rest are what the adaptors are fitted on. '
                             f'Pass --heldout-images {self.num_images // 4 or 1} or more --num-images.')

    @property
    def num_heldout(self) -> int:
        n = self.heldout if self.heldout is not None else min(64, self.num_images // 4)
        return max(1, min(n, self.num_images - 1))


@dataclass
class SynthesisConfig:
    """BatchNorm-inversion settings when ``images.source`` is None (stage ``images``)."""
    preset: str = 'fast'
    steps: Optional[int] = None  # optimisation steps per batch; default: the preset's
    batch_size: int = 32
    # Images per forward pass; a larger batch is optimised in parts whose BatchNorm statistics are pooled, so
    # the batch matches as a set (Sony MCT). None: the whole batch in one pass.
    micro_batch: Optional[int] = None

    def __post_init__(self):
        _positive(steps=self.steps, batch_size=self.batch_size, micro_batch=self.micro_batch)
        get_preset(self.preset, self.steps)  # an unknown preset, or fewer steps than its phases, fails now


@renamed_fields(images='num_images')
@dataclass
class ScoringConfig:
    """Which blocks to drop (stage ``scores``)."""
    drop: Optional[int] = None  # the K lowest PRACTISE scores
    latency_reduction: Optional[float] = None  # or: add blocks by score until this fraction of latency is saved
    blocks: Optional[List[str]] = None  # or: drop exactly these blocks (no scoring)
    estimator: str = 'fast'
    num_images: int = 64  # the tiny set the adaptors are fitted on
    adaptor_steps: Optional[int] = None  # default: the estimator's
    # Fold the adaptors fitted around the dropped blocks into the student. Off by default, as the official
    # code, which uses them only to score (on tf_efficientnet_lite0 they lowered top-1, BENCHMARKS.md).
    keep_adaptors: bool = False

    def __post_init__(self):
        chosen = [n for n, v in (('drop', self.drop), ('latency_reduction', self.latency_reduction),
                                 ('blocks', self.blocks)) if v is not None]
        if len(chosen) != 1:
            raise ValueError('Say what to drop, in exactly one way: --drop K (blocks), --latency-reduction F '
                             f"(e.g. 0.25) or --blocks B1,B2{f' (got {chosen})' if chosen else ''}.")
        if self.drop is not None and self.drop < 1:
            raise ValueError(f'drop is a number of blocks, at least 1; got {self.drop}.')
        if self.latency_reduction is not None and not 0 < self.latency_reduction < 1:
            raise ValueError(f'latency_reduction is a fraction between 0 and 1 (e.g. 0.25), got '
                             f'{self.latency_reduction}.')
        if self.blocks is not None and not self.blocks:
            raise ValueError('blocks is empty; name at least one block (practise-df blocks --model ... lists them).')
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"Unknown estimator '{self.estimator}'; choose from {sorted(ESTIMATORS)}.")
        _positive(num_images=self.num_images, adaptor_steps=self.adaptor_steps)


@dataclass
class LatencyConfig:
    """How latency is measured (stage ``scores``, and the report)."""
    batch_size: int = 32
    device: Optional[str] = None  # default: the training device
    # 'auto': timed runs continue until every saving's 95% interval is at most ci_width percentage points
    # wide, or max_seconds have passed (per measurement); a number fixes the runs
    repeats: Union[int, str] = AUTO
    ci_width: float = CI_WIDTH
    max_seconds: float = MAX_SECONDS
    block_latency: Optional[str] = None  # per-block savings measured elsewhere (practise-df latency --per-block)
    runtime: str = 'torch'  # or 'onnxruntime': latency measured on the exported graph, as deployed
    threads: Optional[int] = None  # default: torch's thread count

    def __post_init__(self):
        _positive(batch_size=self.batch_size, threads=self.threads)
        check_repeats(self.repeats)
        if not (self.ci_width > 0 and self.max_seconds > 0):
            raise ValueError(f'ci_width and max_seconds must be positive, got {self.ci_width} and {self.max_seconds}.')
        if self.runtime not in RUNTIMES:
            raise ValueError(f"Unknown latency runtime '{self.runtime}'; choose from {', '.join(RUNTIMES)}.")


EXPORTS = ('onnx', 'int8')


@dataclass
class EvalConfig:
    """Evaluation at the end (stage ``report``)."""
    data: Optional[str] = None  # labelled image folder for top-1/top-5
    max_images: Optional[int] = None
    batch_size: int = 32
    # After finetuning, keep the finetuned student only if it is closer to the teacher than the dropped one on
    # natural photos neither was trained on (practise_df.guard); both are listed in the report.
    guard: bool = True
    guard_images: Optional[List[str]] = None  # photos (files or folders); default: scikit-image's sample photos
    guard_signal: str = 'kl'
    # 'onnx' or 'int8': the deployable file (EXPORT_FILES) written into the run through export_model, checked
    # against PyTorch, evaluated on `data` and timed against the teacher in ONNX Runtime
    export: Optional[str] = None

    def __post_init__(self):
        _positive(max_images=self.max_images, batch_size=self.batch_size)
        if self.export is not None and self.export not in EXPORTS:
            raise ValueError(f"Unknown export '{self.export}'; choose from {', '.join(EXPORTS)}.")
        if self.guard_signal not in SIGNALS:
            raise ValueError(f"Unknown guard signal '{self.guard_signal}'; choose from {', '.join(SIGNALS)}.")
        if self.guard_images is not None:
            photo_paths(self.guard_images)  # every path exists and folders hold photos


@dataclass
class CardConfig:
    """Metadata of the model card written beside the compressed model (stage ``report``)."""
    license: Optional[str] = None  # a Hub license id; 'unknown' when not given
    base_model: Optional[str] = None  # the teacher's Hub repo id; 'unknown' when not given


@dataclass
class RobustnessConfig:
    """ImageNet-C evaluation of ``eval.data`` (stage ``report``)."""
    enabled: bool = False
    corruptions: Optional[str] = None  # e.g. 'noise,fog'; default all 15
    severities: Optional[str] = None  # e.g. '1,5'; default 1-5

    def __post_init__(self):
        parse_corruptions(self.corruptions)  # a bad name fails now, not after hours of work
        parse_severities(self.severities)


@dataclass
class CompressConfig:
    """Everything one compression run needs; saved as ``run.json`` beside its outputs."""
    model: str  # a spec (practise_df.create_model) or compressed-model directory; a name for a teacher passed in
    output_dir: str
    weights: Optional[str] = None  # local file, 'pretrained', or None / 'random' for random init
    num_classes: Optional[int] = None  # passed to the model constructor (default: the model's, or the weights')
    model_kwargs: Optional[Dict[str, Any]] = None  # more constructor arguments
    # The preprocessing for everything (synthesis, scoring, guard, evaluation, export); default: the model's
    input_size: Optional[int] = None  # square input size
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    interpolation: Optional[str] = None
    crop_pct: Optional[float] = None
    seed: int = 0
    images: ImagesConfig = field(default_factory=ImagesConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    scoring: Optional[ScoringConfig] = None  # required: what to drop
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    card: CardConfig = field(default_factory=CardConfig)

    def __post_init__(self):
        for name, kind in _GROUPS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, _build(kind, _renamed(getattr(self, name), RENAMED_SETTINGS.get(name, {}), name),
                                           name))
        if self.scoring is None:
            raise ValueError('Say what to drop: --drop K (blocks), --latency-reduction F (e.g. 0.25) or --blocks B1,B2 '
                             '(scoring.drop / latency_reduction / blocks in a settings file).')
        if self.robustness.enabled and not self.eval.data:
            raise ValueError('robustness needs eval data (--eval-data): a labelled image folder to corrupt.')
        _positive(input_size=self.input_size, num_classes=self.num_classes)
        if self.seed < 0:  # numpy and the synthesis seeds take none below 0: refused before any work
            raise ValueError(f'seed must be at least 0, got {self.seed}.')
        if self.model_kwargs is not None and not isinstance(self.model_kwargs, dict):
            raise ValueError(f'model_kwargs must be a mapping of constructor arguments, not '
                             f'{type(self.model_kwargs).__name__}.')
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f'crop_pct is a fraction above 0 and at most 1, got {self.crop_pct}.')
        model_arguments(self.num_classes, self.model_kwargs)  # num_classes given twice, two values: fails now
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Unknown interpolation '{self.interpolation}'; choose from {', '.join(INTERPOLATIONS)}.")

    @property
    def model_arguments(self) -> Dict[str, Any]:
        """The model constructor's arguments (``num_classes`` and ``model_kwargs``)."""
        return model_arguments(self.num_classes, self.model_kwargs)

    @property
    def preprocessing(self) -> Dict[str, Any]:
        """Overrides of the model's data config (None: the model's)."""
        return {k: getattr(self, k) for k in PREPROCESSING}

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists, as the file holds them

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = 'the settings') -> 'CompressConfig':
        return _build(cls, renamed_settings(data, source), source)

    @classmethod
    def from_file(cls, path: str, **overrides: Any) -> 'CompressConfig':
        """Read a JSON or YAML file (``run.json`` of an earlier run, or one written by hand);
        ``overrides`` (e.g. ``output_dir``) replace top-level values."""
        return cls.from_dict({**read_settings_file(path), **overrides}, source=path)


# Settings renamed since earlier releases, {group: {old name: new name}}: a run.json written before still loads
# (and resumes: its settings are compared under the new names).
RENAMED_SETTINGS = {'finetune': {'iterations': 'steps'}, 'scoring': {'images': 'num_images'}}


def renamed_settings(data: Dict[str, Any], source: str = 'the settings') -> Dict[str, Any]:
    """``data`` (a run's settings, nested by group) with the names of earlier releases replaced by today's."""
    if not isinstance(data, dict):
        return data
    return {key: _renamed(value, RENAMED_SETTINGS[key], f'{source}: {key}') if key in RENAMED_SETTINGS and
            isinstance(value, dict) else value for key, value in data.items()}


def _renamed(values: Dict[str, Any], names: Dict[str, str], where: str) -> Dict[str, Any]:
    values = dict(values)
    for old, new in names.items():
        if old in values:
            if new in values:
                raise ValueError(f'{where}: {old!r} is the old name of {new!r}; give only {new!r}.')
            values[new] = values.pop(old)
    return values


# The stage that owns each group of settings (in pipeline order): on resume, a finished stage's settings are
# fixed; later stages' settings may change.
STAGE_SETTINGS = {
    'images': ('model', 'weights', 'num_classes', 'model_kwargs', 'input_size', 'mean', 'std', 'interpolation',
               'crop_pct', 'seed', 'images', 'synthesis'),
    'scores': ('scoring', 'latency'),
    'finetune': ('finetune',),
    'report': ('eval', 'robustness', 'card'),
}

_GROUPS = {'images': ImagesConfig, 'synthesis': SynthesisConfig, 'scoring': ScoringConfig,
           'latency': LatencyConfig, 'finetune': FinetuneConfig, 'eval': EvalConfig,
           'robustness': RobustnessConfig, 'card': CardConfig}


def read_settings_file(path: str) -> Dict[str, Any]:
    """A JSON or YAML mapping from ``path``, with errors that name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Settings file '{path}' does not exist.")
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith(('.yaml', '.yml')):
            import yaml  # timm's dependency; only needed for YAML files
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(f"'{path}' is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {e}") \
            from None
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' must hold a mapping of settings, not {type(data).__name__}.")
    return data


def is_run_settings(path: str) -> bool:
    """``path`` holds the settings of a compression run as :func:`practise_df.compress` writes them (its
    ``run.json``): every key a :class:`CompressConfig` field, the model, output folder and selection present.
    A run folder is recognised by this content, never by the file's name alone."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    fields = {f.name for f in dataclasses.fields(CompressConfig)}
    return isinstance(data, dict) and {'model', 'output_dir', 'scoring'} <= set(data) <= fields and \
        isinstance(data['scoring'], dict)


def _build(cls, data: Dict[str, Any], source: str):
    """``cls(**data)`` with nested groups, and an error naming unknown keys."""
    if not isinstance(data, dict):
        raise ValueError(f'{source}: expected a mapping of settings, got {type(data).__name__}.')
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
                         f"known: {', '.join(sorted(names))}.")
    for key, kind in typing.get_type_hints(cls).items():  # before any comparison fails on the wrong type
        if key in data and not _is_a(data[key], kind):
            raise ValueError(f'{source}: setting {key!r} must be {_describe(kind)}, got {data[key]!r} '
                             f'({type(data[key]).__name__}).')
    try:
        return cls(**data)
    except TypeError as e:  # a missing required setting
        raise ValueError(f'{source}: {e}') from None


def _is_a(value: Any, kind: Any) -> bool:
    """``value`` has the annotated type ``kind`` (as a JSON or YAML file can give it: lists for tuples,
    integers for floats, mappings for the groups)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        return any(_is_a(value, arm) for arm in args)
    if origin in (list, tuple, List) or kind in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_is_a(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(kind):
        return isinstance(value, (dict, kind))
    return True


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Union:
        return ' or '.join(_describe(a) for a in typing.get_args(kind))
    if typing.get_origin(kind) in (list, tuple):
        return f"a list of {_describe(typing.get_args(kind)[0]).split(' ', 1)[1]}s" if typing.get_args(kind) else \
            'a list'
    names = {int: 'a whole number', float: 'a number', str: 'a string', bool: 'true or false', type(None): 'null'}
    return names.get(kind, 'a mapping of settings' if dataclasses.is_dataclass(kind) else str(kind))


def _positive(**values: Optional[int]) -> None:
    bad = [f'{k}={v}' for k, v in values.items() if v is not None and not v >= 1]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be at least 1.")
