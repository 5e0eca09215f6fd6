"""The flags several commands share, declared once: one name, one type, one help text everywhere.

Also the checks every command runs on its outputs before any work (a file or folder of the user's is
never replaced) and the deprecated spellings of renamed flags, which keep working for one release.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Dict, Optional, Tuple

import torch

from practise_io import check_outputs_apart, check_writable, write_json_atomic

from .._distributed import process_state
from ..models import INTERPOLATIONS, PREPROCESSING, model_arguments, resolve_data_config
from ..checkpoint import load_model
from ..config import check_mixes
from ..export import is_exported_file, load_exported
from ..latency import AUTO, CI_WIDTH, MAX_SECONDS, RUNTIMES


def device(name: str) -> str:
    """argparse type of ``--device``: a torch device that exists on this machine."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{name}' is not a device; use cpu, cuda, cuda:1 or mps.") from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"'{name}': no CUDA GPU is visible on this machine; use --device cpu.")
    if dev.type == 'cuda' and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"'{name}': this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    if dev.type == 'mps' and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"'{name}': Apple's MPS backend is not available here; use --device cpu.")
    return name


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number.") from None
        if value < low:
            raise argparse.ArgumentTypeError(f'must be at least {low}, got {value}.')
        return value
    parse.__name__ = 'positive int' if low == 1 else 'non-negative int'  # argparse names the type in errors
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number.") from None


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f'must be at least 0, got {value}.')
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f'is a fraction between 0 and 1 (e.g. 0.25), got {value}.')
    return value


def repeats(text: str):
    """argparse type of ``--repeats``: 'auto' or a whole number of at least 1."""
    return AUTO if text == AUTO else positive_int(text)


repeats.__name__ = "'auto' or positive int"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number.") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f'must be above 0, got {value}.')
    return value


def mix_list(text: str) -> list:
    """argparse type of ``--finetune-mixes``: comma-separated fractions of the finetuning update, in (0, 1]."""
    mixes = [_number(m) for m in text.split(',') if m.strip()]
    try:
        check_mixes(mixes, 'mixes')
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return mixes


def block_list(text: str) -> list:
    blocks = [b.strip() for b in text.split(',') if b.strip()]
    if not blocks:
        raise argparse.ArgumentTypeError('name at least one item, e.g. layer1.1,layer3.2.')
    twice = sorted({b for b in blocks if blocks.count(b) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"names {', '.join(twice)} more than once; name each once.")
    return blocks


def json_object(text: str) -> dict:
    """argparse type of ``--model-kwargs``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({e.msg} at character {e.pos}); write an object such "
                                         """as '{"drop_path_rate": 0.1}'.""") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of constructor arguments such as "
                                         f"""'{{"drop_path_rate": 0.1}}', not {type(value).__name__}.""")
    return value


def crop_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number.") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'is the centre-crop fraction, above 0 and at most 1 (e.g. 0.875), '
                                         f'got {value}.')
    return value


def add_model(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model/--weights, the constructor's arguments and the preprocessing overrides (named as timm's
    validate.py names them). Without a default, so compress's parser leaves unset flags out."""
    g = parser.add_argument_group('model')
    g.add_argument('--model', required=required,
                   help='timm:NAME, torchvision:NAME, NAME (timm), local-dir:PATH or hf-hub:ORG/NAME (a timm model '
                        'folder), py:FILE.py:FUNCTION or py:package.module:FUNCTION (a function that returns the '
                        'network), or a compressed-model directory')
    g.add_argument('--weights',
                   help="local .pth/.pt/.bin/.safetensors/.pth.tar (timm train.py's args.yaml beside it is read), "
                        "'pretrained' (hub weights, online) or 'random' (default: random init; compressed "
                        'directories and timm folders carry their own)')
    g.add_argument('--num-classes', type=positive_int,
                   help="classes of the model's classifier (default: the model's, or the weights file's)")
    g.add_argument('--model-kwargs', type=json_object, metavar='JSON',
                   help="""more constructor arguments as a JSON object, e.g. '{"drop_path_rate": 0.1}'""")
    g.add_argument('--input-size', type=positive_int, help="square input size (default: the model's)")
    deprecated(g, '--resolution', '--input-size')
    g.add_argument('--mean', type=float, nargs='+', metavar='MEAN',
                   help="input normalisation mean, one value per channel (default: the model's)")
    g.add_argument('--std', type=float, nargs='+', metavar='STD',
                   help="input normalisation std, one value per channel (default: the model's)")
    g.add_argument('--interpolation', choices=INTERPOLATIONS, help="resize interpolation (default: the model's)")
    g.add_argument('--crop-pct', type=crop_fraction, help="center-crop fraction (default: the model's)")


HELDOUT_HELP = 'images held out to measure recoverability on'
ESTIMATOR_HELP = 'how the adaptors are fitted to measure recoverability (fast: ours; official: the official settings)'
LATENCY_BATCH_HELP = 'batch size the latency is measured at'
NUM_IMAGES_HELP = 'images to synthesise or load'
SYNTH_STEPS_HELP = "synthesis steps per batch (default: the preset's; its phases are scaled)"
DROP_HELP = 'drop this many blocks (the lowest PRACTISE scores)'
LATENCY_REDUCTION_HELP = 'drop blocks by score until this fraction of latency is saved, e.g. 0.25'
BLOCKS_HELP = 'blocks to drop, comma-separated (e.g. layer1.1,layer3.2)'


def add_selection(group, prefix: str = '') -> None:
    """--drop K | --latency-reduction F: how many blocks to drop (``prefix``: the config group of compress)."""
    sel = group.add_mutually_exclusive_group()
    sel.add_argument('--drop', dest=prefix + 'drop', type=positive_int, metavar='K', help=DROP_HELP)
    sel.add_argument('--latency-reduction', dest=prefix + 'latency_reduction', type=fraction, metavar='F',
                     help=LATENCY_REDUCTION_HELP)
    return sel


def add_data(parser, required: bool = True) -> None:
    parser.add_argument('--data', required=required,
                        help='images: a folder (one subfolder per class gives labels: numbered folders or ImageNet '
                             'wnids are class indices, other names count in sorted order if as many as the model has), '
                             'hf:NAME[:SPLIT] or a save_to_disk folder')


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default after its help when it has one worth showing (not None or False)."""

    def _get_help_string(self, action):
        text = action.help or ''
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings and \
                '(default' not in text:
            text += ' (default: %(default)s)'
        return text


def add_teacher(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--teacher', default=None,
                        help='the teacher, a spec or compressed directory: baseline for agreement (and CE / mCE)')
    parser.add_argument('--teacher-weights', default=None, help="weights of --teacher (as --weights)")


def add_common(parser: argparse.ArgumentParser, device_flag: bool = True, seed: bool = True) -> None:
    if device_flag:
        parser.add_argument('--device', type=device, default='cpu', help='cpu, cuda, cuda:1 or mps')
    if seed:
        parser.add_argument('--seed', type=non_negative_int, default=_default(parser, 0),
                            help='the same seed gives the same result')
    parser.add_argument('--json', action='store_true', help='print machine-readable JSON instead of a table')


def _default(parser, value):
    """``value``, unless the parser leaves unset flags out (compress: settings files fill them)."""
    return parser.argument_default if parser.argument_default == argparse.SUPPRESS else value


def add_runtime(parser, prefix: str = '') -> None:
    """--runtime / --threads (compress: --latency-runtime / --latency-threads): where latency is measured."""
    flag = '--latency-' if prefix else '--'
    parser.add_argument(f'{flag}runtime', dest=prefix + 'runtime', choices=RUNTIMES,
                        help='measure latency in PyTorch eager (torch) or on the exported ONNX graph in ONNX Runtime '
                             '(onnxruntime, as deployed; needs practise-df[deploy])')
    parser.add_argument(f'{flag}threads', dest=prefix + 'threads', type=positive_int, metavar='THREADS',
                        help="threads the latency is measured with (default: torch's thread count)")


def add_timing(parser, prefix: str = '') -> None:
    """--repeats / --ci-width / --max-seconds (compress: --latency-...): how long latency is measured."""
    flag = '--latency-' if prefix else '--'
    parser.add_argument(f'{flag}repeats', dest=prefix + 'repeats', type=repeats, metavar='auto|N',
                        default=_default(parser, AUTO),
                        help="timed runs per model: 'auto' continues until the saving's 95%% interval is narrower "
                             'than the width below or the time cap is reached; a number fixes them (default: auto)')
    parser.add_argument(f'{flag}ci-width', dest=prefix + 'ci_width', type=positive_float, metavar='PP',
                        default=_default(parser, CI_WIDTH),
                        help=f'with auto repeats: stop once the 95%% interval is this many percentage points wide '
                             f'(default: {CI_WIDTH:g})')
    parser.add_argument(f'{flag}max-seconds', dest=prefix + 'max_seconds', type=positive_float, metavar='S',
                        default=_default(parser, MAX_SECONDS),
                        help=f'with auto repeats: stop after this many seconds of timing (default: {MAX_SECONDS:g})')


def add_batch_size(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument('--batch-size', type=positive_int, default=default, help='images per batch')


def add_output(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument('--output', metavar='FILE', default=None, required=required,
                        help='file the result is written to (an existing file needs --overwrite)')
    add_overwrite(parser)


def add_output_dir(parser: argparse.ArgumentParser, required: bool = False, overwrite: bool = True) -> None:
    parser.add_argument('--output-dir', '--output_dir', dest='output_dir', required=required, metavar='DIR',
                        help='directory the results are written into: new or empty, or an earlier one of the same '
                             'kind to continue or replace')
    if overwrite:
        add_overwrite(parser)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    if '--overwrite' not in parser._option_string_actions:
        parser.add_argument('--overwrite', action='store_true',
                            help='replace an earlier result at the output path (never a file or folder of yours)')


class _OldSpellings(argparse.Action):
    """Mixed into a flag's action class by :func:`deprecated`: says what to write instead when the flag is
    given by an old spelling (``old_spellings``: old -> new)."""
    old_spellings: Dict[str, str]

    def __call__(self, parser, namespace, values, option_string=None):
        new = self.old_spellings.get(option_string)
        if new is not None:
            _warn_deprecated(parser, option_string, new)
        super().__call__(parser, namespace, values, new or option_string)  # --no-X: as the new --no-Y


@functools.lru_cache(maxsize=None)
def _with_old_spellings(kind: type) -> type:
    return type(f'{kind.__name__}WithOldSpellings', (_OldSpellings, kind), {})


def deprecated(parser, old: str, new: str) -> None:
    """Accept ``old`` as a deprecated spelling of the flag ``new`` (declared before; hidden from --help).

    ``old`` is another name of ``new``'s own action, so it takes the same values into the same destination
    and satisfies ``new`` where ``new`` is required; using it prints what to write instead."""
    action = parser._option_string_actions.get(new)
    if action is None or old in parser._option_string_actions:
        raise ValueError(f'deprecated({old!r}, {new!r}): declare {new} first, and {old} nowhere else.')
    if not isinstance(action, _OldSpellings):
        action.__class__ = _with_old_spellings(type(action))
        action.old_spellings = {}
    action.old_spellings[old] = new
    parser._option_string_actions[old] = action  # parsed as the action's; not in option_strings, so not shown


def deprecated_meaning(parser, old: str, instead: str, dest: str, **kwargs) -> None:
    """Accept ``old``, a retired flag whose meaning no single new flag has (``instead`` says what to write),
    into ``dest`` (hidden from --help); the command translates it. Prefer :func:`deprecated` for a renamed flag."""
    parser.add_argument(old, dest=dest, action=_Retired, instead=instead, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


class _Retired(argparse.Action):
    """A retired flag (:func:`deprecated_meaning`): stores its value and says what to write instead."""

    def __init__(self, option_strings, dest, instead: str = '', **kwargs):
        self.instead = instead
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        _warn_deprecated(parser, option_string, self.instead)
        setattr(namespace, self.dest, values)


def _warn_deprecated(parser, old: str, instead: str) -> None:
    print(f'{parser.prog}: warning: {old} is deprecated and will be removed in the next release; use {instead}.',
          file=sys.stderr)


def old_spellings(parser: argparse.ArgumentParser) -> Dict[str, Tuple[str, argparse.Action]]:
    """{old spelling: (new spelling, action)} of every deprecated alias ``parser`` accepts."""
    return {old: (new, action) for action in parser._actions if isinstance(action, _OldSpellings)
            for old, new in action.old_spellings.items()}


def warn_random_weights(spec: str, weights: Optional[str], flag: str = '--model') -> None:
    """One line when a model whose predictions matter (a teacher, a model to compress, evaluate or export) is
    a named timm/torchvision architecture built with random weights because no weights were given (``random``
    given on purpose says nothing; folders and factories bring their own)."""
    library = spec.split(':', 1)[0].lower() if ':' in spec else 'timm'
    if weights or library not in ('timm', 'torchvision', 'tv') or os.path.exists(spec):
        return
    weights_flag = '--teacher-weights' if flag == '--teacher' else '--weights'
    print(f"practise-df: warning: {flag} {spec} has no {weights_flag}, so it is built with random weights and its "
          f"predictions mean nothing. Pass {weights_flag} FILE (or 'pretrained'), or {weights_flag} random to say "
          'that is meant.', file=sys.stderr)


def load(args, source: Optional[str] = None, weights: Optional[str] = None, weights_matter: bool = True):
    """(model, data config) from ``--model/--weights`` (or the given source), the model arguments and the
    preprocessing flags; with ``weights_matter`` (not for block lists and timing) a model built with random
    weights is warned about. An exported ``.onnx``/``.pt2`` file is loaded with
    :func:`~practise_df.load_exported`."""
    if weights_matter and source is None:
        warn_random_weights(args.model, args.weights)
    source, weights = (source, weights) if source else (args.model, args.weights)
    kwargs = model_arguments(getattr(args, 'num_classes', None), getattr(args, 'model_kwargs', None))
    if is_exported_file(source):
        if weights not in (None, '', 'random') or kwargs:
            raise ValueError(f"'{source}' is an exported file and carries its own weights and architecture; drop "
                             '--weights, --num-classes and --model-kwargs.')
        model = load_exported(source, device=getattr(args, 'device', 'cpu'), threads=getattr(args, 'threads', None))
        if 'input_size' not in model.pretrained_cfg and getattr(args, 'input_size', None) is None:
            raise ValueError(f"'{source}' carries no preprocessing metadata (exported elsewhere?); pass --input-size.")
    else:
        model = load_model(source, weights, seed=getattr(args, 'seed', None), **kwargs)
    config = resolve_data_config(model, **{k: getattr(args, k, None) for k in PREPROCESSING})
    return model, config


def load_teacher(args):
    if not args.teacher:
        return None
    warn_random_weights(args.teacher, args.teacher_weights, '--teacher')
    return load_model(args.teacher, args.teacher_weights, seed=getattr(args, 'seed', None))


def check_output_file(path: Optional[str], overwrite: bool, flag: str = '--output') -> None:
    """Before any work: ``path`` can be written as a single result file without replacing anything of the
    user's (an existing file only with ``--overwrite``; never a directory)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} '{path}' is a directory; name a file (e.g. "
                                f"{os.path.join(path, 'out.json')}).")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{flag} '{path}' already exists. Pass --overwrite to replace it, or choose another "
                              'name; nothing was changed.')
    check_writable(path, flag)


# Every flag that names a path a command writes, and every one it reads (compress also checks the paths its
# settings file gives: practise_df.pipeline.check_inputs).
OUTPUT_FLAGS = ('output', 'output_dir', 'heatmap')
INPUT_FLAGS = ('model', 'weights', 'teacher', 'teacher_weights', 'student', 'student_weights', 'data',
               'calibration')


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work, for every command: no output path is, lies inside or holds one of its inputs."""
    def flags(names):
        return {'--' + n.replace('_', '-'): getattr(args, n, None) for n in names}
    check_outputs_apart(flags(OUTPUT_FLAGS), flags(INPUT_FLAGS))


def process_device(device: str) -> str:
    """``--device`` for this process: under ``accelerate launch`` a device type without an index (``cuda``)
    means each process's own device, as Accelerate assigns them."""
    state = process_state()
    if state.num_processes > 1 and ':' not in device and state.device.type == torch.device(device).type:
        return str(state.device)
    return device


def write_output(path: Optional[str], result: dict) -> None:
    if path and process_state().is_main_process:  # under accelerate launch every process has the result
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_json_atomic(path, result)
