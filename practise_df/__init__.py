"""practise-df: drop whole blocks of a pretrained vision model (PRACTISE) and recover accuracy without
the customer's data.

The public API is listed here once; every name is also usable alone.
"""
from .adaptors import fold_adaptors as fold_adaptors, insert_adaptors as insert_adaptors
from .baselines import (filter_prune as filter_prune, filter_prune_to_latency as filter_prune_to_latency,
                        first_blocks as first_blocks, grow_to_latency as grow_to_latency,
                        output_difference as output_difference, output_difference_scores as output_difference_scores,
                        random_blocks as random_blocks)
from .blocks import drop_blocks as drop_blocks, dropped_blocks as dropped_blocks, find_blocks as find_blocks
from .checkpoint import load_compressed as load_compressed, save_compressed as save_compressed
from .corruptions import (CORRUPTIONS as CORRUPTIONS, SEVERITIES as SEVERITIES, corrupt as corrupt,
                          parse_corruptions as parse_corruptions, parse_severities as parse_severities)
from .data import ImageFolderDataset as ImageFolderDataset, image_loader as image_loader
from .evaluate import evaluate as evaluate
from .export import (export_model as export_model, load_exported as load_exported,
                     read_metadata as read_metadata)
from .latency import (block_latency_savings as block_latency_savings, count_macs as count_macs,
                      count_params as count_params, measure_latency as measure_latency)
from .models import (PrePoolFeatures as PrePoolFeatures, create_model as create_model,
                     load_weights as load_weights, resolve_data_config as resolve_data_config)
from .scoring import (BlockScore as BlockScore, drop_and_recover as drop_and_recover,
                      score_blocks as score_blocks, select_blocks as select_blocks)

__version__ = '0.1.0'

__all__ = [
    'create_model', 'load_weights', 'resolve_data_config', 'PrePoolFeatures',
    'find_blocks', 'drop_blocks', 'dropped_blocks',
    'insert_adaptors', 'fold_adaptors',
    'measure_latency', 'block_latency_savings', 'count_params', 'count_macs',
    'score_blocks', 'select_blocks', 'drop_and_recover', 'BlockScore',
    'save_compressed', 'load_compressed',
    'ImageFolderDataset', 'image_loader', 'evaluate',
    'export_model', 'load_exported', 'read_metadata',
    'first_blocks', 'random_blocks', 'output_difference', 'output_difference_scores', 'grow_to_latency',
    'filter_prune', 'filter_prune_to_latency',
    'corrupt', 'CORRUPTIONS', 'SEVERITIES', 'parse_corruptions', 'parse_severities',
]
