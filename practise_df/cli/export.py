"""``practise-df export``: a teacher or compressed student as an ONNX file or a torch.export program,
checked against PyTorch before it is written (``practise_df.export.export_model``).

    practise-df export --model runs/lite0/model --format onnx --output lite0.onnx --dynamic-batch
    practise-df export --model timm:resnet50 --weights r50.pth --output r50.onnx --data val/ --max-images 500
"""
from __future__ import annotations

from .._format import format_table
from ..export import ATOL, CALIBRATION_IMAGES, FORMATS, QUANTIZATIONS, export_model
from . import _args


def export_command_parser(subparsers):
    parser = subparsers.add_parser('export', help='export a model to ONNX (or torch.export), checked against PyTorch')
    _args.add_model(parser)
    g = parser.add_argument_group('export')
    g.add_argument('--format', default='onnx', choices=FORMATS, help='onnx, or torch-export (a .pt2 program)')
    _args.add_output(g, required=True)  # .onnx, or .pt2 for torch-export
    _args.add_batch_size(g, 1)
    g.add_argument('--dynamic-batch', action='store_true', help='accept any batch size')
    g.add_argument('--opset', type=_args.positive_int, default=None, help="ONNX opset (default: the exporter's)")
    g.add_argument('--quantize', choices=QUANTIZATIONS, default=None,
                   help="ONNX Runtime's static int8 quantization after the float export matched PyTorch; its "
                        'differences from PyTorch are reported, not refused: measure its accuracy')
    g.add_argument('--calibration', default=None, metavar='DIR',
                   help="images that set the int8 ranges (default: crops of scikit-image's natural sample photos)")
    g.add_argument('--calibration-images', type=_args.positive_int, default=CALIBRATION_IMAGES,
                   help='how many calibration images')
    g = parser.add_argument_group('check against PyTorch (on random inputs, and on --data when given)')
    _args.add_data(g, required=False)
    g.add_argument('--max-images', type=_args.positive_int, default=None, help='evaluate a seeded subset of this '
                                                                               'many images')
    g.add_argument('--atol', type=_args.non_negative_float, default=ATOL,
                   help='largest absolute logit difference allowed')
    _args.add_common(parser)
    parser.set_defaults(func=export_command, render=render_export)
    return parser


def export_command(args) -> dict:
    _args.check_output_file(args.output, args.overwrite)
    model, config = _args.load(args)
    result = export_model(model, args.output, args.format, data_config=config, batch_size=args.batch_size,
                          dynamic_batch=args.dynamic_batch, opset=args.opset, data=args.data,
                          max_images=args.max_images, atol=args.atol, device=args.device, overwrite=args.overwrite,
                          seed=args.seed, quantize=args.quantize, calibration=args.calibration,
                          num_calibration=args.calibration_images)
    return {'model': args.model, **result}


def render_export(r: dict) -> str:
    batch = 'any batch' if r['dynamic_batch'] else f"batch {r['batch_size']}"
    opset = f", opset {r['opset']}" if 'opset' in r else ''
    rows = [(where, c['images'], ','.join(map(str, c['batch_sizes'])), c['max_abs_diff'], c['top1_mismatches'])
            for where, c in r['checks'].items()]
    meta = r['metadata']
    check = (f"checked against PyTorch (max |logit difference| allowed {r['atol']:g}, same top-1 required)"
             if not r.get('quantize') else
             f"the float export matched PyTorch; {meta['quantization']}. Its differences from PyTorch (reported, "
             "not refused)")
    return (f"wrote {r['output']} ({r['format']}{opset}, {batch}, input {tuple(r['input_size'])}, "
            f"{r['bytes'] / 1e6:.1f} MB)\n{check}:\n"
            + format_table(rows, ('inputs', 'images', 'batch sizes', 'max |diff|', 'top-1 differs'))
            + f"\nmetadata: mean {meta.get('mean')}, std {meta.get('std')}, {meta.get('interpolation')}, crop_pct "
              f"{meta.get('crop_pct')}, {meta['num_classes']} classes")
