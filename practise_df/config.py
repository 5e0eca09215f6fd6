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
from typing import Any, Dict, List, Optional, Sequence, Union

from ._renamed import renamed_fields

__all__ = ['CompressConfig', 'ImagesConfig', 'SynthesisConfig', 'ScoringConfig', 'LatencyConfig',
           'FinetuneConfig', 'EvalConfig', 'RobustnessConfig', 'CardConfig', 'STAGE_SETTINGS']

# The vocabulary of the settings, defined here at the bottom of the package so that a settings file loads
# without importing (or being stopped by) the code that runs it. Names that live in a registry (synthesis
# presets, scoring estimators, guard signals, corruptions) and every path are checked before a run by
# practise_df.pipeline.check_settings / check_inputs, not when a file is read: an old run.json whose paths
# moved still loads.
PREPROCESSING = ('input_size', 'mean', 'std', 'interpolation', 'crop_pct')  # what overrides a model's data config
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')  # timm's resize modes
RUNTIMES = ('torch', 'onnxruntime')
AUTO = 'auto'
CI_WIDTH = 2.0  # percentage points: repeats='auto' stops once every saving's 95% interval is this narrow
MAX_SECONDS = 60.0  # ... or once this much time has passed
LOSSES = ('mir', 'kd', 'mir+kd', 'ce')
# SGD learning rate per loss when none is given. MiR: the official PRACTISE rate, 0.02. Issue 14 had lowered
# it to 0.002 on tf_efficientnet_lite0 alone; over both tracks of issue 31 (BENCHMARKS "Which recovered
# student to keep", means of 2 seeds, the best share of the update of each rate) 0.02 gains at least as much:
# Fashion-MNIST ResNet +1.97 / +28.00 points over dropping at 16% / 27% latency saved (0.002: +1.83 / +26.91),
# lite0 +0.40 / +0.55 at 15% / 25% (0.002: +0.15 / +0.10), and the recovery choice keeps the dropped student
# where finetuning hurts. KD and MiR+KD stay at 0.002: KD diverged at 0.02 on lite0 and 0.02 was not measured
# for it on the ResNet. CE: the official 'BP' baseline's.
DEFAULT_LR = {'mir': 0.02, 'kd': 0.002, 'mir+kd': 0.002, 'ce': 1e-4}
# The recovery choice's signal and its images (practise_df.recovery holds its other defaults). Measured as
# decisions over every pair of candidates of both tracks (456 pairs; right = keeps the one with the higher
# real top-1, counting pairs within one paired SE right either way in the second figure):
#   KL on crops of scikit-image's sample photos: lite0 92% / 95%, ResNet 86% / 90%, all 87.5% / 91.7%;
#   KL on held-out pool images: ResNet 96% / 97% but lite0 22% / 28% (it prefers the students finetuning on
#   synthesized images moved away from real images: kept students 10 paired SEs below dropping);
#   feature MSE on the photos: 90.6% / 93.4% of the pairs, but as the rule among all candidates it kept a lite0
#   student 1.4 SEs below dropping. So KL on the photos, for every model: natural photos suit a grayscale
#   Fashion-MNIST model less in principle, yet ordered its candidates 86% right and kept 98% of the best gain.
SIGNAL = 'kl'
SIGNAL_IMAGE_SOURCE = 'photos'
SIGNAL_IMAGES = ('pool', 'guard-images', 'photos')
# Crops of the sample photos (or the user's photos) measured when those are the signal images (--recovery-crops):
# the teacher and each candidate run once over them.
PHOTO_CROPS = 256


def check_repeats(repeats: Union[int, str]) -> Union[int, str]:
    """``repeats`` if it is 'auto' or a whole number of at least 1, else a ValueError that says so."""
    if repeats == AUTO or (isinstance(repeats, int) and not isinstance(repeats, bool) and repeats >= 1):
        return repeats
    raise ValueError(f"repeats is '{AUTO}' (until the interval is narrow enough or the time cap) or a whole number "
                     f'of at least 1, got {repeats!r}.')


def model_arguments(num_classes: Optional[int] = None, model_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The constructor arguments of ``--num-classes`` and ``--model-kwargs`` (num_classes / model_kwargs)."""
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        if kwargs.get('num_classes', num_classes) != num_classes:
            raise ValueError(f"num_classes is {num_classes} but the model arguments say {kwargs['num_classes']}; "
                             "give it once (--num-classes).")
        kwargs['num_classes'] = num_classes
    return kwargs


def check_mixes(mixes: Sequence[float], what: str = 'mixes') -> None:
    """Fractions of the finetuning update kept (WiSE-FT) lie in (0, 1]: 1 is the whole update, and the
    dropped student (0) is always a candidate of its own."""
    if not mixes or not all(0 < m <= 1 for m in mixes):
        raise ValueError(f'{what}: each is a fraction of the finetuning update kept, in (0, 1] (1: all of it; '
                         f'the dropped student is always a candidate), e.g. 0.1,0.25,0.5,1; got {list(mixes)}.')


MAX_HELDOUT = 64  # images held out by default: a quarter of the images, at most this many


@dataclass
class ImagesConfig:
    """The images the run learns from (stage ``images``)."""
    # None: synthesize from the teacher. Else an image folder, hf:NAME[:SPLIT], a save_to_disk folder or
    # crops:PHOTO.jpg / crops:DIR (random augmented crops of natural photos).
    source: Optional[str] = None
    num_images: int = 256
    heldout: Optional[int] = None  # held out to measure recoverability; default a quarter, at most MAX_HELDOUT
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
        n = self.heldout if self.heldout is not None else min(MAX_HELDOUT, self.num_images // 4)
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


@renamed_fields(images='num_images')
@dataclass
class ScoringConfig:
    """Which blocks to drop (stage ``scores``)."""
    drop: Optional[int] = None  # the K lowest PRACTISE scores
    latency_reduction: Optional[float] = None  # or: add blocks by score until this fraction of latency is saved
    blocks: Optional[List[str]] = None  # or: drop exactly these blocks (no scoring)
    candidates: Optional[List[str]] = None  # score only these blocks (default: every droppable block)
    estimator: str = 'fast'
    num_images: int = 64  # the tiny set the adaptors are fitted on
    adaptor_steps: Optional[int] = None  # default: the estimator's
    # Fold the adaptors fitted around the dropped blocks into the student. Off by default, as the official
    # code, which uses them only to score (on tf_efficientnet_lite0 they lowered top-1, BENCHMARKS.md).
    keep_adaptors: bool = False

    def __post_init__(self):
        chosen = self._chosen()
        if len(chosen) > 1:  # none is checked by the pipeline: practise-df score may only score
            raise ValueError('Say what to drop, in exactly one way: --drop K (blocks), --latency-reduction F '
                             f'(e.g. 0.25) or --blocks B1,B2 (got {chosen}).')
        if self.drop is not None and self.drop < 1:
            raise ValueError(f'drop is a number of blocks, at least 1; got {self.drop}.')
        if self.latency_reduction is not None and not 0 < self.latency_reduction < 1:
            raise ValueError(f'latency_reduction is a fraction between 0 and 1 (e.g. 0.25), got '
                             f'{self.latency_reduction}.')
        for name in ('blocks', 'candidates'):
            if getattr(self, name) is not None and not getattr(self, name):
                raise ValueError(f'{name} is empty; name at least one block (practise-df blocks --model ... lists '
                                 'them).')
        _positive(num_images=self.num_images, adaptor_steps=self.adaptor_steps)

    def _chosen(self) -> List[str]:
        return [n for n, v in (('drop', self.drop), ('latency_reduction', self.latency_reduction),
                               ('blocks', self.blocks)) if v is not None]

    @property
    def selects(self) -> Optional[str]:
        """How the blocks to drop are chosen ('drop', 'latency_reduction' or 'blocks'); None: not said."""
        chosen = self._chosen()
        return chosen[0] if chosen else None


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

    def timing(self, input_size) -> Dict[str, Any]:
        """The keyword arguments of :mod:`practise_df.latency`'s measurements (``block_latency``,
        ``compare_latency``, ``select_blocks``'s ``latency_kwargs``) at ``input_size`` (C, H, W)."""
        return dict(input_size=tuple(input_size), batch_size=self.batch_size, device=self.device or 'cpu',
                    repeats=self.repeats, runtime=self.runtime, threads=self.threads, ci_width=self.ci_width,
                    max_seconds=self.max_seconds)


@renamed_fields(iterations='steps')
@dataclass
class FinetuneConfig:
    """How the student is finetuned against the teacher (stage ``finetune``; :func:`practise_df.finetune`)."""
    loss: str = 'mir'
    steps: int = 2000  # optimizer steps (with batch 64, momentum 0.9, weight decay 1e-4, x0.1 at 40%: official)
    batch_size: int = 64  # per process
    lr: Optional[float] = None  # default: DEFAULT_LR[loss]
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_at: float = 0.4  # StepLR x0.1 at this fraction of the steps
    gradient_accumulation_steps: int = 1
    kd_temperature: float = 4.0
    kd_weight: float = 1.0  # weight of the KD term in 'mir+kd'
    max_grad_norm: Optional[float] = 5.0  # clip the gradient norm (None: no clipping)
    # Keep BatchNorm statistics fixed (eval mode) while training. None: yes, except that compress trains them
    # when told its images are real (images.real), as the official few-shot recipe does. Why not on synthesized
    # or out-of-domain images: their batch statistics are not the data's, and tf_efficientnet_lite0 loses 15-22
    # points of top-1 with batch statistics (BENCHMARKS "Data-free recovery against plain dropping"). Track B
    # (issue 31) finetuned with them frozen throughout; train-mode BatchNorm was not measured there.
    freeze_bn: Optional[bool] = None
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    eval_every: int = 0  # optimizer steps between evaluations of finetune()'s eval_data (0: only at the end)
    seed: Optional[int] = None  # None: 0, or the run's seed under compress
    num_workers: int = 0
    # Fraction of the finetuning update kept (WiSE-FT). None: all of it (1). compress finetunes with all of it and
    # then chooses the share (practise_df.recovery): only this one when set; with --no-guard this one, by default
    # finetune.DATAFREE_MIX on synthesized or out-of-domain images (images.real unset).
    mix: Optional[float] = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown finetuning loss '{self.loss}'; choose from {', '.join(LOSSES)}.")
        if self.steps < 0 or self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError('batch_size and gradient_accumulation_steps must be at least 1, and steps '
                             'at least 0 (0 = no finetuning).')
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f'lr must be positive, got {self.lr}.')
        if self.mix is not None:
            check_mixes([self.mix], 'mix (--finetune-mix)')

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.loss]


EXPORTS = ('onnx', 'int8')


@dataclass
class EvalConfig:
    """Evaluation at the end (stage ``report``)."""
    data: Optional[str] = None  # labelled image folder for top-1/top-5
    max_images: Optional[int] = None
    batch_size: int = 32
    # After finetuning, keep the student closest to the teacher on images finetuning never saw, among the dropped
    # one and the finetuned one at each of finetune_mixes, a finetuned one only when closer than the dropped one
    # (by recovery.MIN_Z; every candidate is listed in the report). False: keep the finetuned
    # student at finetune.mix, no choice.
    guard: bool = True
    guard_images: Optional[List[str]] = None  # photos (files or folders) to measure on, cropped
    guard_signal: str = SIGNAL  # what measures closeness: 'kl', 'feature_mse' or 'agreement'
    # Fractions of the finetuning update tried (WiSE-FT, no retraining). None: recovery.MIXES, or only
    # finetune.mix when that is set.
    finetune_mixes: Optional[List[float]] = None
    # Where closeness is measured: 'pool' (the run's images held out from finetuning whole), 'guard-images' or
    # 'photos' (scikit-image's sample photos). None: 'guard-images' when given, else SIGNAL_IMAGE_SOURCE.
    recovery_images: Optional[str] = None
    recovery_crops: int = PHOTO_CROPS  # crops of the photos measured when those are the signal images
    # 'onnx' or 'int8': the deployable file (EXPORT_FILES) written into the run through export_model, checked
    # against PyTorch, evaluated on `data` and timed against the teacher in ONNX Runtime
    export: Optional[str] = None

    def __post_init__(self):
        _positive(max_images=self.max_images, batch_size=self.batch_size)
        if self.export is not None and self.export not in EXPORTS:
            raise ValueError(f"Unknown export '{self.export}'; choose from {', '.join(EXPORTS)}.")
        _positive(recovery_crops=self.recovery_crops)
        if self.finetune_mixes is not None:
            check_mixes(self.finetune_mixes, 'finetune_mixes (--finetune-mixes)')
        if self.recovery_images is not None and self.recovery_images not in SIGNAL_IMAGES:
            raise ValueError(f"Unknown recovery images '{self.recovery_images}'; choose from "
                             f"{', '.join(SIGNAL_IMAGES)}.")
        if self.recovery_images == 'guard-images' and self.guard_images is None:
            raise ValueError('--recovery-images guard-images measures on your photos: pass them with --guard-images '
                             'PHOTOS, or choose --recovery-images pool or photos.')
        if self.recovery_images in ('pool', 'photos') and self.guard_images is not None:
            raise ValueError(f'--recovery-images {self.recovery_images} does not read --guard-images; pass '
                             '--recovery-images guard-images (the default when --guard-images is given) or drop '
                             '--guard-images.')
        if not self.guard and self.finetune_mixes is not None:
            raise ValueError('--no-guard keeps the finetuned student at --finetune-mix without a choice, so '
                             '--finetune-mixes would not be used: drop one of the two.')

    @property
    def signal_images(self) -> str:
        """Where the recovery choice measures closeness (``recovery_images`` resolved)."""
        if self.recovery_images is not None:
            return self.recovery_images
        return 'guard-images' if self.guard_images else SIGNAL_IMAGE_SOURCE


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
        if self.finetune.mix is not None and self.eval.finetune_mixes is not None:
            raise ValueError('Give --finetune-mix (one mix, the only finetuned candidate) or --finetune-mixes (the '
                             'candidates), not both.')
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
