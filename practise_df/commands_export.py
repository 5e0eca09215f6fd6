"""``practise-df export``: a teacher or compressed student as an ONNX file or a torch.export program,
checked against PyTorch before it is written.

    practise-df export --model runs/lite0/model --format onnx --output lite0.onnx --dynamic-batch
    practise-df export --model timm:resnet50 --weights r50.pth --output r50.onnx --data val/ --max-images 500

Wired into ``practise_df/cli.py`` with ``export_command_parser``, ``export_command`` and ``render_export``;
the work is :func:`practise_df.export.export_model`.
"""
from __future__ import annotations

from ._format import format_table
from .cli import add_model_args, load_from_args
from .export import ATOL, FORMATS, export_model

__all__ = ['export_command_parser', 'export_command', 'render_export']


def export_command_parser(subparsers):
    """Add the ``export`` sub-command to ``subparsers``; returns its parser."""
    p = subparsers.add_parser('export', help='export a model to ONNX (or torch.export), checked against PyTorch')
    add_model_args(p, data=True)
    g = p.add_argument_group('export')
    g.add_argument('--format', default='onnx', choices=FORMATS)
    g.add_argument('--output', required=True, help='file to write (.onnx, or .pt2 for torch-export)')
    g.add_argument('--batch-size', type=int, default=1, help='batch the graph is exported for')
    g.add_argument('--dynamic-batch', action='store_true', help='accept any batch size')
    g.add_argument('--opset', type=int, default=None, help="ONNX opset (default: the exporter's)")
    g.add_argument('--overwrite', action='store_true', help='replace --output if it exists')
    g = p.add_argument_group('check against PyTorch')
    g.add_argument('--data', default=None, help='image folder to check on, besides random inputs')
    g.add_argument('--max-images', type=int, default=None, help='check on a seeded subset of --data')
    g.add_argument('--atol', type=float, default=ATOL, help='largest absolute logit difference allowed')
    g.add_argument('--seed', type=int, default=0)
    return p


def export_command(args) -> dict:
    model, config = load_from_args(args)
    result = export_model(model, args.output, args.format, data_config=config, batch_size=args.batch_size,
                          dynamic_batch=args.dynamic_batch, opset=args.opset, data=args.data,
                          max_images=args.max_images, atol=args.atol, device=args.device, overwrite=args.overwrite,
                          seed=args.seed)
    return {'model': args.model, **result}


def render_export(r: dict) -> str:
    batch = 'any batch' if r['dynamic_batch'] else f"batch {r['batch_size']}"
    opset = f", opset {r['opset']}" if 'opset' in r else ''
    rows = [(where, c['images'], ','.join(map(str, c['batch_sizes'])), c['max_abs_diff'], c['top1_mismatches'])
            for where, c in r['checks'].items()]
    meta = r['metadata']
    return (f"wrote {r['output']} ({r['format']}{opset}, {batch}, input {tuple(r['input_size'])}, "
            f"{r['bytes'] / 1e6:.1f} MB)\n"
            f"checked against PyTorch (max |logit difference| allowed {r['atol']:g}, same top-1 required):\n"
            + format_table(rows, ('inputs', 'images', 'batch sizes', 'max |diff|', 'top-1 differs'))
            + f"\nmetadata: mean {meta.get('mean')}, std {meta.get('std')}, {meta.get('interpolation')}, crop_pct "
              f"{meta.get('crop_pct')}, {meta['num_classes']} classes")
