"""``practise-df score``: ``compress`` stopped after the drop. The same flags, defaults and stage functions
(:func:`practise_df.compress` with ``stop_after``): PRACTISE scores of the model's blocks on ``--images``
(default: synthesized from the model), and with ``--drop`` / ``--latency-reduction`` the blocks selected; with
``--output-dir`` the student with them dropped is saved there as a compressed-model folder, the one
``compress --finetune-steps 0`` saves as ``model/``. The run's working files (images, scores) go to a
temporary folder that is removed afterwards.

Score's own flags of earlier releases keep working, as deprecated spellings: ``--data`` (``--images``),
``--train-images`` (``--score-images``), ``--blocks`` (``--candidates``), ``--iterations``
(``--adaptor-steps``), ``--batch-size`` (``--latency-batch-size``), ``--output`` (``--output-dir``) and
``--device`` (``--latency-device``, and ``--cpu`` for ``cpu``).
"""
from __future__ import annotations

import argparse
import tempfile

from practise_io import check_outputs_apart

from .._distributed import process_state
from .._format import format_interval, format_table
from ..checkpoint import check_model_dir, save_compressed
from ..config import MAX_HELDOUT
from ..pipeline import input_paths
from . import _args
from .compress import add_compress_arguments, compress_command, config_from_args


def score_command_parser(subparsers):
    parser = subparsers.add_parser('score', argument_default=argparse.SUPPRESS,
                                   help='compress stopped after the drop: PRACTISE scores; optionally select, drop '
                                        'and save')
    add_compress_arguments(parser, until_drop=True)
    _args.deprecated(parser, '--data', '--images')
    _args.deprecated_meaning(parser, '--train-images', '--score-images', dest='train_images', type=_args.positive_int)
    _args.deprecated(parser, '--blocks', '--candidates')
    _args.deprecated(parser, '--iterations', '--adaptor-steps')
    _args.deprecated(parser, '--batch-size', '--latency-batch-size')
    _args.deprecated(parser, '--output', '--output-dir')
    _args.deprecated_meaning(parser, '--device', '--latency-device (and --cpu)', dest='device', type=_args.device)
    parser.set_defaults(func=score_command, render=render_score)
    return parser


def _from_old_flags(args: argparse.Namespace) -> None:
    """Score's deprecated flags, in compress's terms: ``--train-images N`` is the tiny set (``--score-images``)
    and, without ``--num-images``, N plus the held-out images are loaded, as before; ``--device D`` is where
    the latency is measured and, for ``cpu``, where everything runs."""
    values = vars(args)
    train = values.pop('train_images', None)
    if train is not None:
        values['scoring.num_images'] = train
        if 'images.num_images' not in values:
            values.setdefault('images.heldout', MAX_HELDOUT)  # score held out this many besides N
            values['images.num_images'] = train + values['images.heldout']
    device = values.pop('device', None)
    if device is not None:
        values.setdefault('latency.device', device)
        values['cpu'] = values.get('cpu', False) or device == 'cpu'


def score_command(args) -> dict:
    _from_old_flags(args)
    model_dir = vars(args).pop('output_dir', None)  # the student's folder; the run itself is temporary
    with tempfile.TemporaryDirectory(prefix='practise-df-score-') as run_dir:
        args.output_dir = run_dir
        config = config_from_args(args, defaults={'finetune': {'steps': 0}})
        if model_dir is not None:  # before any work
            if config.scoring.selects not in ('drop', 'latency_reduction'):
                raise ValueError('Saving a compressed model needs a selection: --drop K or --latency-reduction F.')
            check_outputs_apart({'--output-dir': model_dir}, input_paths(config))
            check_model_dir(model_dir, getattr(args, 'overwrite', False))
        dropped = compress_command(args, config=config, stop_after='drop' if model_dir is not None else 'scores')
        if not process_state().is_main_process:  # under accelerate launch: the main process reports and saves
            return {}
        result = {'model': config.model, 'estimator': config.scoring.estimator, **dropped.selection.to_dict()}
        if config.scoring.selects is None:
            del result['selected']
        if model_dir is not None:
            result['output'] = save_compressed(dropped.student, model_dir, provenance=dropped.provenance,
                                               overwrite=getattr(args, 'overwrite', False),
                                               extra={'scores': result['scores']})
    return result


def render_score(r: dict) -> str:
    """The scores, with each block's latency saving and its 95% interval (blocks whose intervals overlap are
    scored with one shared saving: ``practise_df.scoring.comparable_savings``)."""
    rows = [(s['block'], s['recoverability'], s['mse_dropped'], s['saved_pct'], format_interval(s), s['score'])
            for s in r['scores']]
    text = f"{r['model']} ({r['estimator']} estimator, lower score = drop first)\n" + format_table(
        rows, ('block', 'recoverability', 'mse dropped', 'saved %', '95% interval', 'score'))
    if r.get('selected'):
        text += f"\nselected: {', '.join(r['selected'])}"
    if r.get('output'):
        text += f"\nsaved compressed model to {r['output']}"
    return text
