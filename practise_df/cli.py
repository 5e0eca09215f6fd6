"""``practise-df`` command line: each subcommand mirrors one function of the Python API.

    practise-df blocks  --model SPEC                      -> find_blocks
    practise-df latency --model SPEC [--drop B1,B2]       -> measure_latency / drop_blocks
    practise-df score   --model SPEC --weights W --data D -> score_blocks / select_blocks / save_compressed
    practise-df eval    --model SPEC|DIR --data D         -> evaluate
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import sys
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torchvision

from . import __version__
from .blocks import drop_blocks, find_blocks
from .latency import count_macs, count_params, measure_latencies
from .models import create_model, resolve_data_config

Command = Callable[[argparse.Namespace], dict]
_COMMANDS: Dict[str, Command] = {}
_RENDERERS: Dict[str, Callable[[dict], str]] = {}


def add_model_args(parser: argparse.ArgumentParser, data: bool = False, required: bool = True):
    g = parser.add_argument_group('model')
    g.add_argument('--model', required=required,
                   help="timm:NAME, torchvision:NAME, NAME (timm) or a compressed-model directory")
    g.add_argument('--weights', default=None,
                   help="local .pth/.pt/.bin/.safetensors, or 'pretrained' for hub weights (online); "
                        "default: random init (compressed directories carry their own)")
    g.add_argument('--input-size', type=int, default=None, help="square input resolution (default: model's)")
    if data:
        g.add_argument('--interpolation', default=None, help="resize interpolation (default: model's)")
        g.add_argument('--crop-pct', type=float, default=None, help="center-crop fraction (default: model's)")
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, mps')
    parser.add_argument('--json', action='store_true', help='print machine-readable JSON instead of a table')


def load_from_args(args) -> tuple:
    model = create_model(args.model, args.weights)
    config = resolve_data_config(model, input_size=args.input_size,
                                 interpolation=getattr(args, 'interpolation', None),
                                 crop_pct=getattr(args, 'crop_pct', None))
    return model, config


def register(name: str, render: Callable[[dict], str]):
    def wrap(fn: Command) -> Command:
        _COMMANDS[name] = fn
        _RENDERERS[name] = render
        return fn
    return wrap


def _table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[f'{c:.4g}' if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def _parse_blocks(text: Optional[str]) -> List[str]:
    return [b.strip() for b in (text or '').split(',') if b.strip()]


# --- blocks -----------------------------------------------------------------------------------------

def _render_blocks(r: dict) -> str:
    if 'models' in r:
        return '\n'.join(r['models'])
    rows = [(b['name'], b['type'], b['params']) for b in r['blocks']]
    return f"{r['model']}: {len(rows)} droppable blocks\n" + _table(rows, ('block', 'type', 'params'))


@register('blocks', _render_blocks)
def blocks_command(args) -> dict:
    if args.list:
        names = [f'timm:{n}' for n in timm.list_models(args.list)] + \
                [f'torchvision:{n}' for n in fnmatch.filter(torchvision.models.list_models(), args.list)]
        return {'models': names}
    model, config = load_from_args(args)
    names = find_blocks(model, config['input_size'])
    return {'model': args.model, 'blocks': [
        {'name': n, 'type': type(model.get_submodule(n)).__name__, 'params': count_params(model.get_submodule(n))}
        for n in names]}


# --- latency ----------------------------------------------------------------------------------------

def _render_latency(r: dict) -> str:
    rows = [(v['name'], v['median_ms'], v['p10_ms'], v['p90_ms'], v['params'], v['macs'] / 1e6)
            for v in r['variants']]
    text = (f"batch {r['batch_size']}, input {tuple(r['input_size'])}, {r['device']}, {r['repeats']} runs\n"
            + _table(rows, ('model', 'median ms', 'p10 ms', 'p90 ms', 'params', 'MMACs')))
    if 'saved_pct' in r:
        text += f"\nlatency saved: {r['saved_pct']:.1f}%"
    return text


@register('latency', _render_latency)
def latency_command(args) -> dict:
    model, config = load_from_args(args)
    size = config['input_size']
    variants = [('model', model)]
    if args.drop:
        variants.append((f"dropped {args.drop}", drop_blocks(model, _parse_blocks(args.drop))))
    lats = measure_latencies([m for _, m in variants], size, args.batch_size, args.device, args.warmup, args.repeats)
    out = {'batch_size': args.batch_size, 'input_size': list(size), 'device': args.device, 'repeats': args.repeats,
           'variants': [{'name': n, **l.to_dict(), 'params': count_params(m), 'macs': count_macs(m, size)}
                        for (n, m), l in zip(variants, lats)]}
    if args.drop:
        out['saved_pct'] = 100 * (1 - lats[1].median_ms / lats[0].median_ms)
    return out


# --- score ------------------------------------------------------------------------------------------

def _render_score(r: dict) -> str:
    rows = [(s['block'], s['recoverability'], s['mse_dropped'], s['saved_pct'], s['score']) for s in r['scores']]
    text = f"{r['model']} ({r['estimator']} estimator, lower score = drop first)\n" + _table(
        rows, ('block', 'recoverability', 'mse dropped', 'saved %', 'score'))
    if r.get('selected'):
        text += f"\nselected: {', '.join(r['selected'])}"
    if r.get('output'):
        text += f"\nsaved compressed model to {r['output']}"
    return text


@register('score', _render_score)
def score_command(args) -> dict:
    from .checkpoint import save_compressed
    from .data import load_image_tensor, split_tensor
    from .scoring import ESTIMATORS, drop_and_recover, score_blocks, select_blocks

    model, config = load_from_args(args)
    images, _ = load_image_tensor(args.data, config, max_images=args.train_images + args.heldout_images,
                                  seed=args.seed)
    train, held = split_tensor(images, min(args.train_images, len(images) - 1), seed=args.seed)
    latency_kwargs = dict(input_size=config['input_size'], batch_size=args.batch_size, device=args.device)
    settings = ESTIMATORS[args.estimator]
    if args.iterations is not None:
        from dataclasses import replace
        settings = replace(settings, iterations=args.iterations)
    scores = score_blocks(model, train, held, blocks=_parse_blocks(args.blocks) or None, settings=settings,
                          latency_kwargs=latency_kwargs, seed=args.seed, progress=not args.json)
    out = {'model': args.model, 'estimator': args.estimator, 'scores': [s.to_dict() for s in scores]}
    if args.drop or args.latency_reduction:
        out['selected'] = select_blocks(scores, drop=args.drop, latency_reduction=args.latency_reduction,
                                        model=model, latency_kwargs=latency_kwargs)
        if args.output:
            pruned = drop_and_recover(model, out['selected'], train, settings=settings, seed=args.seed)
            out['output'] = save_compressed(pruned, args.output, data_config=config, overwrite=args.overwrite,
                                            extra={'scores': out['scores']})
    return out


# --- eval -------------------------------------------------------------------------------------------

def _render_eval(r: dict) -> str:
    keys = [k for k in ('top1', 'top5', 'agreement') if k in r]
    rows = [[r['model'], r['images']] + [r[k] for k in keys] + [r['latency_ms']]]
    return _table(rows, ['model', 'images'] + [k + ' %' for k in keys] + [f"latency ms (batch {r['batch_size']})"])


@register('eval', _render_eval)
def eval_command(args) -> dict:
    from .data import image_loader
    from .evaluate import evaluate

    model, config = load_from_args(args)
    teacher = create_model(args.teacher, args.teacher_weights) if args.teacher else None
    loader = image_loader(args.data, config, batch_size=args.batch_size, max_images=args.max_images,
                          seed=args.seed, num_workers=args.workers)
    result = evaluate(model, loader, args.device, teacher=teacher, progress=not args.json)
    lat = measure_latencies([model], config['input_size'], args.batch_size, args.device, repeats=args.repeats)[0]
    return {'model': args.model, **result, 'latency_ms': lat.median_ms, 'batch_size': args.batch_size,
            'skipped_files': loader.dataset.skipped}


# --- parser -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='practise-df', description='Drop blocks of a pretrained vision model '
                                     'and recover it without the original data.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress details')
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('blocks', help='list the droppable blocks of a model')
    p.add_argument('--list', metavar='PATTERN', help="list model names matching a pattern instead (e.g. 'resnet*')")
    add_model_args(p, required=False)

    p = sub.add_parser('latency', help='measure latency, params and MACs (optionally with blocks dropped)')
    add_model_args(p)
    p.add_argument('--drop', help='comma-separated blocks to drop, e.g. layer1.1,layer3.2')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--repeats', type=int, default=20)

    p = sub.add_parser('score', help='PRACTISE recoverability scores; optionally select, drop and save')
    add_model_args(p, data=True)
    p.add_argument('--data', required=True, help='image folder: the tiny set and held-out images come from it')
    p.add_argument('--train-images', type=int, default=100, help='tiny set size')
    p.add_argument('--heldout-images', type=int, default=100, help='images recoverability is measured on')
    p.add_argument('--estimator', choices=['fast', 'official'], default='fast')
    p.add_argument('--iterations', type=int, default=None, help="adaptor iterations (default: the estimator's)")
    p.add_argument('--blocks', help='comma-separated subset of blocks to score (default: all candidates)')
    p.add_argument('--batch-size', type=int, default=1, help='batch size the latency is measured at')
    sel = p.add_mutually_exclusive_group()
    sel.add_argument('--drop', type=int, help='select this many blocks')
    sel.add_argument('--latency-reduction', type=float, help='select blocks until this fraction of latency is saved')
    p.add_argument('--output', help='with --drop/--latency-reduction: save the compressed model (adaptors folded) here')
    p.add_argument('--overwrite', action='store_true', help='replace --output if it exists')
    p.add_argument('--seed', type=int, default=0)

    p = sub.add_parser('eval', help='top-1/top-5 accuracy and latency on an image folder')
    add_model_args(p, data=True)
    p.add_argument('--data', required=True, help='image folder with one subfolder per class (sorted = class index)')
    p.add_argument('--teacher', help='also report top-1 agreement with this model')
    p.add_argument('--teacher-weights')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--max-images', type=int)
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(levelname)s %(message)s')
    if args.command == 'blocks' and not args.list and not args.model:
        parser.error('blocks needs --model SPEC (or --list PATTERN)')
    try:
        result = _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f'practise-df {args.command}: error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if getattr(args, 'json', False) else _RENDERERS[args.command](result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
