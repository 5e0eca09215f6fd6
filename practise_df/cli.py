"""``practise-df`` command line: each subcommand mirrors one function of the Python API.

    practise-df blocks  --model SPEC                      -> find_blocks
    practise-df latency --model SPEC [--drop B1,B2]       -> measure_latency / drop_blocks
    practise-df score   --model SPEC --weights W --data D -> score_blocks / select_blocks / save_compressed
    practise-df eval    --model SPEC|DIR --data D         -> evaluate
    practise-df synth   --model SPEC --out DIR ...        -> synth.synthesize
    practise-df compress --model SPEC --drop K ...        -> compress
    practise-df robustness --model SPEC|DIR --data D      -> robustness.evaluate_robustness
    practise-df export  --model SPEC|DIR --output FILE    -> export.export_model (commands_export.py)
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torchvision

from . import __version__
from ._format import format_table
from .blocks import drop_blocks, find_blocks
from .latency import RUNTIMES, block_latency_savings, count_macs, count_params, measure_latencies, runtime_info
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


def _parse_blocks(text: Optional[str]) -> List[str]:
    return [b.strip() for b in (text or '').split(',') if b.strip()]


# --- blocks -----------------------------------------------------------------------------------------

def _render_blocks(r: dict) -> str:
    if 'models' in r:
        return '\n'.join(r['models'])
    rows = [(b['name'], b['type'], b['params']) for b in r['blocks']]
    return f"{r['model']}: {len(rows)} droppable blocks\n" + format_table(rows, ('block', 'type', 'params'))


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
    head = (f"batch {r['batch_size']}, input {tuple(r['input_size'])}, {r['device']}, {r['runtime']} "
            f"({r['threads']} threads), {r['repeats']} runs\n")
    if 'blocks' in r:  # --per-block
        rows = [(b, v['latency_ms'], v['saved_ms'], v['saved_pct']) for b, v in r['blocks'].items()]
        return head + format_table(rows, ('dropped block', 'median ms', 'saved ms', 'saved %'))
    rows = [(v['name'], v['median_ms'], v['p10_ms'], v['p90_ms'], v['params'], v['macs'] / 1e6)
            for v in r['variants']]
    text = head + format_table(rows, ('model', 'median ms', 'p10 ms', 'p90 ms', 'params', 'MMACs'))
    if 'saved_pct' in r:
        text += f"\nlatency saved: {r['saved_pct']:.1f}%"
    return text


@register('latency', _render_latency)
def latency_command(args) -> dict:
    model, config = load_from_args(args)
    size = config['input_size']
    measured = runtime_info(args.runtime, args.device, args.threads)
    timing = (args.batch_size, args.device, args.warmup, args.repeats, args.runtime, args.threads)
    if args.per_block:
        blocks = _parse_blocks(args.drop) or find_blocks(model, size)
        table = block_latency_savings(model, blocks, size, *timing)
        return {'model': args.model, 'batch_size': args.batch_size, 'input_size': list(size), 'device': args.device,
                'repeats': args.repeats, **measured, 'blocks': table}
    variants = [('model', model)]
    if args.drop:
        variants.append((f"dropped {args.drop}", drop_blocks(model, _parse_blocks(args.drop))))
    lats = measure_latencies([m for _, m in variants], size, *timing)
    out = {'batch_size': args.batch_size, 'input_size': list(size), 'device': args.device, 'repeats': args.repeats,
           **measured, 'variants': [{'name': n, **lat.to_dict(), 'params': count_params(m), 'macs': count_macs(m, size)}
                        for (n, m), lat in zip(variants, lats)]}
    if args.drop:
        out['saved_pct'] = 100 * (1 - lats[1].median_ms / lats[0].median_ms)
    return out


# --- score ------------------------------------------------------------------------------------------

def _render_score(r: dict) -> str:
    rows = [(s['block'], s['recoverability'], s['mse_dropped'], s['saved_pct'], s['score']) for s in r['scores']]
    text = f"{r['model']} ({r['estimator']} estimator, lower score = drop first)\n" + format_table(
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
    header = ['model', 'images'] + [k + ' %' for k in keys] + [f"latency ms (batch {r['batch_size']})"]
    return format_table(rows, header)


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


# --- robustness -------------------------------------------------------------------------------------

def _render_robustness(r: dict) -> str:
    from .robustness import robustness_table
    text = f"{r['model']} on {r['data']}" + (f" (baseline: teacher {r['teacher']})" if r.get('teacher') else '')
    text += '\n' + robustness_table(r)
    for key in ('heatmap', 'output'):
        if r.get(key):
            text += f'\n{key}: {r[key]}'
    return text


@register('robustness', _render_robustness)
def robustness_command(args) -> dict:
    from torch.utils.data import DataLoader

    from synth import load_images

    from ._io import write_json_atomic
    from .corruptions import parse_corruptions, parse_severities
    from .data import eval_transform
    from .robustness import evaluate_robustness, save_heatmap

    corruptions, severities = parse_corruptions(args.corruptions), parse_severities(args.severities)  # fail early
    model, config = load_from_args(args)
    teacher = create_model(args.teacher, args.teacher_weights) if args.teacher else None
    data = load_images(args.data, config, num_images=args.max_images, seed=args.seed,
                       transform=eval_transform(config, normalize=False))
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    result = {'model': args.model, 'teacher': args.teacher, 'data': args.data}
    result.update(evaluate_robustness(model, loader, config['mean'], config['std'], teacher=teacher,
                                      corruptions=corruptions, severities=severities, seed=args.seed,
                                      device=args.device, progress=not args.json))
    if args.heatmap:
        result['heatmap'] = save_heatmap(result, args.heatmap, title=f"{args.model} on {args.data}")
    if args.output:
        result['output'] = args.output
        write_json_atomic(args.output, result)
    return result


# --- compress ---------------------------------------------------------------------------------------

def add_compress_arguments(parser: argparse.ArgumentParser, **defaults) -> argparse.ArgumentParser:
    """The arguments of ``practise-df compress``. Recipes add them with their own ``defaults``
    (argument dest -> value); an argument given a default is no longer required."""
    g = parser.add_argument_group('teacher')
    g.add_argument('--model', required=True, help='teacher spec (timm:NAME, torchvision:NAME)')
    g.add_argument('--weights', '--teacher-weights', dest='weights', default=None,
                   help="local weights file, 'pretrained' (hub, online) or 'random' (smoke tests)")
    g.add_argument('--resolution', type=int, default=None, help="square input size (default: the model's)")
    g = parser.add_argument_group('images')
    g.add_argument('--images', default=None, help='image folder, hf:NAME[:SPLIT], a save_to_disk directory or '
                   'crops:PHOTO.jpg; default: synthesise from the teacher (BatchNorm inversion)')
    g.add_argument('--num-images', type=int, default=256)
    g.add_argument('--heldout-images', type=int, default=None, help='default: a quarter, at most 64')
    g.add_argument('--synth-preset', default='fast', choices=['fast', 'reference'])
    g.add_argument('--synth-resolution', type=int, default=None,
                   help='synthesise at this size (cheaper), resized to --resolution when used')
    g.add_argument('--iterations', dest='synth_iterations', type=int, default=None,
                   help="synthesis steps per batch (default: the preset's)")
    g.add_argument('--synth-batch-size', type=int, default=32)
    g = parser.add_argument_group('block selection')
    g.add_argument('--estimator', default='fast', choices=['fast', 'official'])
    g.add_argument('--score-images', type=int, default=64, help='tiny set the adaptors are fitted on')
    g.add_argument('--adaptors', action=argparse.BooleanOptionalAction, default=True,
                   help='fit adaptors around the dropped blocks and fold them before finetuning (--no-adaptors: '
                        'keep the dropped model as is; better on lite0 with synthesized images, BENCHMARKS.md)')
    sel = g.add_mutually_exclusive_group()
    sel.add_argument('--drop', type=int, help='number of blocks to drop')
    sel.add_argument('--latency-reduction', type=float, help='fraction of latency to save, e.g. 0.25')
    g.add_argument('--latency-batch-size', type=int, default=32)
    g.add_argument('--latency-device', default=None, help='device latency is measured on (default: training device)')
    g.add_argument('--latency-repeats', type=int, default=10)
    g.add_argument('--latency-runtime', choices=RUNTIMES, default=None,
                   help='measure latency in PyTorch eager (torch, default) or exported to ONNX Runtime')
    g.add_argument('--latency-threads', type=int, default=None, help="latency threads (default: torch's)")
    g.add_argument('--block-latency', default=None, metavar='FILE',
                   help='per-block latency measured elsewhere, e.g. on the deployment device: the output of '
                        'practise-df latency --per-block --json (default: measured here)')
    g = parser.add_argument_group('finetuning')
    g.add_argument('--loss', default='mir', choices=['mir', 'kd', 'ce'])
    g.add_argument('--finetune-iters', type=int, default=2000,
                   help='optimizer steps; 0 keeps the student as recovered (blocks dropped, adaptors folded)')
    g.add_argument('--batch-size', type=int, default=64, help='per process')
    g.add_argument('--lr', type=float, default=0.02)
    g.add_argument('--gradient-accumulation-steps', '--gradient_accumulation_steps', type=int, default=1)
    g.add_argument('--freeze-bn', action=argparse.BooleanOptionalAction, default=False,
                   help='keep BatchNorm statistics fixed while finetuning (needed on synthesized images: train-mode '
                        'BatchNorm adopts their statistics and the student collapses on real ones)')
    g.add_argument('--checkpointing-steps', '--checkpointing_steps', type=int, default=500)
    g.add_argument('--eval-every', type=int, default=0)
    g.add_argument('--eval-data', default=None, help='labelled image folder for top-1/top-5 at the end')
    g.add_argument('--eval-max-images', type=int, default=None)
    g.add_argument('--robustness', action='store_true',
                   help='also evaluate teacher and student under ImageNet-C corruptions of --eval-data')
    g.add_argument('--robustness-corruptions', default=None, help='subset, e.g. noise,fog (default: all 15)')
    g.add_argument('--robustness-severities', default=None, help="e.g. '1,5' (default: 1-5)")
    g = parser.add_argument_group('run')
    g.add_argument('--output-dir', '--output_dir', dest='output_dir', required=True)
    g.add_argument('--overwrite', action='store_true', help='replace an earlier run in --output-dir')
    g.add_argument('--resume', '--resume_from_checkpoint', dest='resume', action='store_true',
                   help='continue the run in --output-dir where it stopped')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--license', default=None, help="model card: Hub license id of the result (default 'unknown')")
    g.add_argument('--base-model', default=None, help="model card: the teacher's Hub repo (default 'unknown')")
    g.add_argument('--cpu', action='store_true', help='train on the CPU even if a GPU is present')
    g.add_argument('--mixed-precision', '--mixed_precision', default=None, choices=['no', 'fp16', 'bf16'])
    g.add_argument('--log-with', '--with_tracking', dest='log_with', default=None,
                   help='experiment tracker for Accelerate (tensorboard, wandb, ...)')
    parser.add_argument('--json', action='store_true', help='print the report as JSON')
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False
    return parser


def compress_config_from_args(args):
    from .compress import CompressConfig
    from .finetune import FinetuneConfig

    if args.drop is None and args.latency_reduction is None:
        raise ValueError('Say how much to compress: --drop K (blocks) or --latency-reduction F (e.g. 0.25).')
    drop = None if args.latency_reduction is not None else args.drop  # a recipe's default --drop yields
    finetune = FinetuneConfig(loss=args.loss, iterations=args.finetune_iters, batch_size=args.batch_size, lr=args.lr,
                              gradient_accumulation_steps=args.gradient_accumulation_steps, freeze_bn=args.freeze_bn,
                              checkpoint_every=args.checkpointing_steps, eval_every=args.eval_every, seed=args.seed)
    return CompressConfig(
        model=args.model, output_dir=args.output_dir, weights=args.weights, images=args.images,
        num_images=args.num_images, heldout_images=args.heldout_images, resolution=args.resolution,
        synth_resolution=args.synth_resolution, synth_preset=args.synth_preset, synth_iterations=args.synth_iterations,
        synth_batch_size=args.synth_batch_size, estimator=args.estimator, score_images=args.score_images,
        adaptors=args.adaptors,
        drop=drop, latency_reduction=args.latency_reduction, latency_batch_size=args.latency_batch_size,
        latency_device=args.latency_device, latency_repeats=args.latency_repeats,
        latency_runtime=args.latency_runtime, latency_threads=args.latency_threads,
        license=args.license, base_model=args.base_model,
        block_latency=args.block_latency, eval_data=args.eval_data, robustness=args.robustness,
        robustness_corruptions=args.robustness_corruptions, robustness_severities=args.robustness_severities,
        eval_max_images=args.eval_max_images, finetune=finetune, seed=args.seed)


def run_compress(args) -> dict:
    """Build the config and the Accelerator from parsed arguments and run the pipeline."""
    from .compress import compress
    from .finetune import make_accelerator

    config = compress_config_from_args(args)
    accelerator = make_accelerator(config.output_dir, config.finetune, cpu=args.cpu,
                                   mixed_precision=args.mixed_precision, log_with=args.log_with)
    if args.log_with:
        accelerator.init_trackers('practise-df', config={k: v for k, v in vars(args).items()
                                                         if isinstance(v, (int, float, str, bool))})
    report = compress(config, overwrite=args.overwrite, resume=args.resume, accelerator=accelerator,
                      progress=not args.json)
    accelerator.end_training()
    return report


def render_report(r: dict) -> str:
    if not r:  # non-main processes
        return ''
    lat = r['latency']
    rows = [('teacher', lat['teacher_ms'], r['params']['teacher'], r['macs']['teacher'] / 1e6),
            ('student', lat['student_ms'], r['params']['student'], r['macs']['student'] / 1e6)]
    text = (f"dropped: {', '.join(r['dropped_blocks'])}"
            f"{' (adaptors fitted and folded)' if r.get('adaptors', True) else ' (no adaptors)'}\n"
            + format_table(rows, ('model', f"latency ms (batch {lat['batch_size']}, {lat['device']})", 'params',
                                  'MMACs'))
            + f"\nlatency saved: {lat['saved_pct']:.1f}%   held-out top-1 agreement with the teacher: "
              f"{r['heldout_agreement']:.1f}%")
    if 'eval' in r:
        t, s = r['eval']['teacher'], r['eval']['student']
        text += (f"\n{r['eval']['data']}: teacher top-1 {t.get('top1', float('nan')):.2f}%, student top-1 "
                 f"{s.get('top1', float('nan')):.2f}% (agreement {s['agreement']:.1f}%)")
        if 'before_finetune' in r['eval']:
            b = r['eval']['before_finetune']
            text += (f"\n  before finetuning: top-1 {b.get('top1', float('nan')):.2f}% "
                     f"(agreement {b['agreement']:.1f}%)")
    return text + f"\ncompressed model: {r['compressed_model']}"


register('compress', render_report)(run_compress)


def recipe_main(description: str, argv: Optional[Sequence[str]] = None, prepare=None, **defaults) -> int:
    """Entry point shared by the scripts in ``recipes/``: the compress arguments with the recipe's
    ``defaults``, an optional ``prepare(args)`` hook, then the pipeline and its report."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compress_arguments(parser, **defaults)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
    name = os.path.basename(sys.argv[0])
    try:
        if prepare is not None:
            prepare(args)
        report = run_compress(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f'{name}: error: {e}', file=sys.stderr)
        return 2
    if report:
        print(json.dumps(report, indent=2) if args.json else render_report(report))
    return 0


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
    p.add_argument('--per-block', action='store_true',
                   help='latency saved by dropping each block alone (every candidate, or those in --drop); '
                        'the --json output is what compress --block-latency reads')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--repeats', type=int, default=20)
    p.add_argument('--runtime', choices=RUNTIMES, default='torch',
                   help='PyTorch eager, or ONNX Runtime (each variant exported to ONNX; CPU provider, CUDA with '
                        '--device cuda and onnxruntime-gpu)')
    p.add_argument('--threads', type=int, default=None, help="threads to measure with (default: torch's)")

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

    from synth.cli import add_synth_arguments, render_synth, synth_command  # synth builds on this module
    register('synth', render_synth)(synth_command)
    p = sub.add_parser('synth', help='synthesise images from a BatchNorm teacher (DeepInversion)')
    add_synth_arguments(p)

    p = sub.add_parser('compress', help='the whole pipeline: images -> score -> drop -> finetune -> evaluate')
    add_compress_arguments(p)

    p = sub.add_parser('robustness', help='accuracy under the 15 ImageNet-C corruptions, with the teacher as baseline')
    add_model_args(p, data=True)
    p.add_argument('--data', required=True, help='labelled image folder, hf:NAME[:SPLIT] or a save_to_disk dataset')
    p.add_argument('--teacher', help='baseline model for CE / mCE and agreement (spec or compressed directory)')
    p.add_argument('--teacher-weights')
    p.add_argument('--corruptions', default='all',
                   help="comma list of names or groups (noise, blur, weather, digital); default all 15")
    p.add_argument('--severities', default='1-5', help="e.g. '1,5' or '1-5'")
    p.add_argument('--max-images', type=int, help='evaluate a seeded subset of this many images')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--seed', type=int, default=0, help='same seed, same corrupted images')
    p.add_argument('--heatmap', metavar='PNG', help='write a corruption x severity heatmap (needs matplotlib)')
    p.add_argument('--output', metavar='JSON', help='also write the result to this file')

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

    from .commands_export import export_command, export_command_parser, render_export  # builds on this module
    register('export', render_export)(export_command)
    export_command_parser(sub)
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
