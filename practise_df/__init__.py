"""practise-df: drop whole blocks of a pretrained vision model (PRACTISE) and recover accuracy without
the customer's data.

The public API is listed here once; every name is also usable alone. Baselines for benchmarks live in
:mod:`practise_df.baselines`, image synthesis and image sources in the :mod:`synth` package.
"""
from synth import synthesize as synthesize

from .blocks import drop_blocks as drop_blocks, find_blocks as find_blocks
from .checkpoint import load_compressed as load_compressed, load_model as load_model
from .checkpoint import Provenance as Provenance, save_compressed as save_compressed
from .pipeline import compress as compress
from .config import CompressConfig as CompressConfig, EvalConfig as EvalConfig, ImagesConfig as ImagesConfig
from .config import LatencyConfig as LatencyConfig, RobustnessConfig as RobustnessConfig
from .config import ScoringConfig as ScoringConfig, SynthesisConfig as SynthesisConfig
from .evaluate import evaluate as evaluate
from .export import export_model as export_model, load_exported as load_exported
from .finetune import FinetuneConfig as FinetuneConfig, finetune as finetune
from .latency import block_latency_savings as block_latency_savings, measure_latency as measure_latency
from .models import create_model as create_model, resolve_data_config as resolve_data_config
from .report import Report as Report
from .robustness import evaluate_robustness as evaluate_robustness
from .scoring import drop_and_recover as drop_and_recover, score_blocks as score_blocks
from .scoring import select_blocks as select_blocks

__version__ = '0.2.0'

__all__ = [
    'compress', 'Report', 'CompressConfig', 'ImagesConfig', 'SynthesisConfig', 'ScoringConfig', 'LatencyConfig',
    'FinetuneConfig', 'EvalConfig', 'RobustnessConfig', 'Provenance',
    'create_model', 'load_model', 'resolve_data_config', 'find_blocks', 'drop_blocks',
    'score_blocks', 'select_blocks', 'drop_and_recover', 'save_compressed', 'load_compressed',
    'measure_latency', 'block_latency_savings', 'finetune', 'evaluate', 'evaluate_robustness', 'synthesize',
    'export_model', 'load_exported',
]
