"""Where the model runs: PyTorch eager against ONNX Runtime for tf_efficientnet_lite0 and the quickstart student,
whole models and per dropped block.

    python benchmarks/bench_deploy.py [--threads 1] [--data ../shared/data/imagenet-sample] [--quick]

1. Export: teacher and student (blocks.4.2 and blocks.1.1 dropped, no adaptors: the quickstart's student)
   go through ``practise_df.export_model`` (ONNX, dynamic batch) and are checked against PyTorch on the
   imagenet-sample images (max |logit difference| and top-1 mismatches on every image), then scored in
   ONNX Runtime. With no mismatch their top-1 is PyTorch's too.
   Then both are quantized to int8 (``export_model(quantize='int8')``: ONNX Runtime's static quantizer,
   calibrated on 64 crops of the scikit-image sample photos, no ImageNet image) and scored the same way.
2. Whole models at batch 1 and 32: eager teacher and student, their ONNX Runtime sessions (static batch, as
   ``practise-df latency --runtime onnxruntime`` times them), the dynamic-batch student and the int8 teacher
   and student (dynamic batch), timed interleaved.
3. Per block, at each of ``--block-batches``: every candidate dropped alone, in both runtimes, timed
   interleaved in one run; the run is repeated ``--block-repeats`` times. Savings are reported as median and
   min/max over the repeats; the block rankings of the two runtimes are compared (Spearman), against how
   well each runtime agrees with itself across repeats, and block pairs whose order flips between runtimes
   with non-overlapping min/max ranges in both are counted as flips beyond noise.

Results: benchmarks/results/deploy.json and deploy.md (``--quick``: runs/bench_deploy_quick.*, fewer
repeats, blocks and images, a smoke test of the script).
"""
import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys

import numpy as np
import onnxruntime
import torch
from common import (IMAGENET_SAMPLE, ROOT, add_threads_argument, lite0_teacher, markdown_table, parse_args, top1,
                    write_results, write_text)

from practise_df import drop_blocks, export_model, find_blocks, load_exported
from practise_df.export import onnxruntime_models
from synth.data import load_image_tensor
from practise_df.latency import measure_latencies

HERE = os.path.dirname(os.path.abspath(__file__))

STUDENT_BLOCKS = ['blocks.4.2', 'blocks.1.1']  # the quickstart's choice
RUNTIMES = ('torch', 'onnxruntime')


def timed(models, input_size, batch, threads, repeats, warmup=2):
    """Latency of each model, all timed interleaved in one run (sessions and eager models alike)."""
    return measure_latencies(models, input_size, batch, 'cpu', warmup=warmup, repeats=repeats, threads=threads)


def export_check(models, cfg, args, out_dir):
    """Export each model with a dynamic batch, checked on the images; top-1 of the ONNX Runtime session."""
    images, labels = load_image_tensor(args.data, cfg, max_images=args.max_images)
    rows = {}
    for name, model in models.items():
        path = os.path.join(out_dir, f'{name}.onnx')
        result = export_model(model, path, dynamic_batch=True, data=args.data, max_images=args.max_images,
                              data_config=cfg, overwrite=True)
        session = load_exported(path, threads=args.threads)
        rows[name] = {'checks': result['checks'], 'opset': result['opset'], 'mb': result['bytes'] / 1e6,
                      'onnxruntime_top1': top1(session, images, labels), 'path': os.path.relpath(path, ROOT)}
        print(f"{name}: exported, {result['checks']['image']}; ONNX Runtime top-1 {rows[name]['onnxruntime_top1']}",
              flush=True)
        path = os.path.join(out_dir, f'{name}_int8.onnx')
        result = export_model(model, path, dynamic_batch=True, data=args.data, max_images=args.max_images,
                              data_config=cfg, overwrite=True, quantize='int8')
        session = load_exported(path, threads=args.threads)
        rows[f'{name} int8'] = {'checks': result['checks'], 'opset': result['opset'], 'mb': result['bytes'] / 1e6,
                                'onnxruntime_top1': top1(session, images, labels), 'path': os.path.relpath(path, ROOT),
                                'quantization': result['metadata']['quantization']}
        print(f"{name} int8: {result['checks']['image']}; top-1 {rows[f'{name} int8']['onnxruntime_top1']}",
              flush=True)
    return rows


def whole_models(teacher, student, cfg, args, student_dynamic, int8):
    size, rows = cfg['input_size'], []
    for batch in args.whole_batches:
        sessions = onnxruntime_models([teacher, student], size, batch, threads=args.threads)
        named = [('teacher', 'torch', teacher), ('student', 'torch', student),
                 ('teacher', 'onnxruntime', sessions[0]), ('student', 'onnxruntime', sessions[1]),
                 ('student (dynamic batch)', 'onnxruntime', student_dynamic),
                 ('teacher int8 (dynamic batch)', 'onnxruntime', int8['teacher']),
                 ('student int8 (dynamic batch)', 'onnxruntime', int8['student'])]
        lats = timed([m for *_, m in named], size, batch, args.threads, args.repeats)
        for (name, runtime, _), lat in zip(named, lats):
            rows.append({'model': name, 'runtime': runtime, 'batch_size': batch, 'median_ms': lat.median_ms,
                         'p10_ms': lat.p10_ms, 'p90_ms': lat.p90_ms})
        print(f'whole models, batch {batch}: ' + ', '.join(f"{r['model']}/{r['runtime']} {r['median_ms']:.1f} ms"
                                                         for r in rows[-len(named):]), flush=True)
    return rows


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def per_block(teacher, blocks, cfg, args, batch):
    """Saved ms per block and runtime in each repeat, then their spread and the ranking comparison."""
    size = cfg['input_size']
    variants = [teacher] + [drop_blocks(teacher, [b], candidates=blocks) for b in blocks]
    sessions = onnxruntime_models(variants, size, batch, threads=args.threads)
    k = len(variants)
    saved = {rt: {b: [] for b in blocks} for rt in RUNTIMES}
    base = {rt: [] for rt in RUNTIMES}
    for repeat in range(args.block_repeats):
        med = [lat.median_ms for lat in timed(variants + sessions, size, batch, args.threads, args.repeats)]
        for rt, offset in zip(RUNTIMES, (0, k)):
            base[rt].append(med[offset])
            for i, b in enumerate(blocks):
                saved[rt][b].append(med[offset] - med[offset + 1 + i])
        print(f'per block, batch {batch}, repeat {repeat + 1}/{args.block_repeats}: base '
              f"{base['torch'][-1]:.1f} ms eager, {base['onnxruntime'][-1]:.1f} ms ONNX Runtime", flush=True)

    table = {}
    for b in blocks:
        table[b] = {}
        for rt in RUNTIMES:
            values = saved[rt][b]
            table[b][rt] = {'saved_ms_median': statistics.median(values), 'saved_ms_min': min(values),
                            'saved_ms_max': max(values),
                            'saved_pct_median': 100 * statistics.median(values) / statistics.median(base[rt]),
                            'saved_ms_repeats': values}
    median_of = {rt: [table[b][rt]['saved_ms_median'] for b in blocks] for rt in RUNTIMES}
    within = {rt: statistics.mean(spearman([saved[rt][b][i] for b in blocks], [saved[rt][b][j] for b in blocks])
                                  for i, j in itertools.combinations(range(args.block_repeats), 2))
              if args.block_repeats > 1 else None for rt in RUNTIMES}
    flips, robust = [], []
    for a, b in itertools.combinations(blocks, 2):
        ta, tb = table[a]['torch'], table[b]['torch']
        oa, ob = table[a]['onnxruntime'], table[b]['onnxruntime']
        if (ta['saved_ms_median'] - tb['saved_ms_median']) * (oa['saved_ms_median'] - ob['saved_ms_median']) >= 0:
            continue
        flips.append([a, b])
        hi, lo = (ta, tb) if ta['saved_ms_median'] > tb['saved_ms_median'] else (tb, ta)  # eager order
        o_hi, o_lo = (oa, ob) if hi is ta else (ob, oa)
        if hi['saved_ms_min'] > lo['saved_ms_max'] and o_lo['saved_ms_min'] > o_hi['saved_ms_max']:
            robust.append([a, b])
    ranks = {rt: [blocks[i] for i in np.argsort(median_of[rt])[::-1]] for rt in RUNTIMES}
    return {'batch_size': batch, 'base_ms_median': {rt: statistics.median(v) for rt, v in base.items()},
            'blocks': table, 'ranking': ranks, 'spearman_between_runtimes': spearman(*median_of.values()),
            'spearman_within_runtime_across_repeats': within, 'order_flips': flips,
            'order_flips_beyond_noise': robust}


def markdown(results) -> str:
    s = results['setup']
    lines = [f"# Deployment latency: PyTorch eager vs ONNX Runtime ({s['date']})", '',
             f"tf_efficientnet_lite0 (ImageNet weights) and its student without {', '.join(STUDENT_BLOCKS)}; "
             f"{s['threads']} thread(s), CPU ({s['machine']}), torch {s['torch']}, onnxruntime {s['onnxruntime']}, "
             f"{s['repeats']} timed runs per measurement; 1-minute load average {s['load_average_start']:.1f} at the "
             f"start, {s['load_average_end']:.1f} at the end.", '', f"`{s['command']}`", '', '## Export check', '']
    lines += markdown_table(
        ['model', 'images', 'max abs logit diff', 'top-1 mismatches', 'ONNX Runtime top-1', 'opset', 'MB'],
        [[name, r['checks']['image']['images'], f"{r['checks']['image']['max_abs_diff']:.2e}",
          r['checks']['image']['top1_mismatches'], r['onnxruntime_top1'], r['opset'], f"{r['mb']:.1f}"]
         for name, r in results['export'].items()])
    lines += ['', '## Whole models (median ms, p10-p90)', '']
    lines += markdown_table(['model', 'runtime', 'batch', 'median ms', 'p10-p90'],
                            [[r['model'], r['runtime'], r['batch_size'], f"{r['median_ms']:.1f}",
                              f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}"] for r in results['whole']], 'llrrr')
    for pb in results['per_block']:
        lines += ['', f"## Per block, batch {pb['batch_size']} (saved ms: median [min, max] over "
                      f"{s['block_repeats']} repeats)", '',
                  f"Full model: {pb['base_ms_median']['torch']:.1f} ms eager, "
                  f"{pb['base_ms_median']['onnxruntime']:.1f} ms ONNX Runtime.", '']
        table = []
        for b, v in pb['blocks'].items():
            row = [b]
            for runtime in ('torch', 'onnxruntime'):
                t = v[runtime]
                row += [f"{t['saved_ms_median']:.2f} [{t['saved_ms_min']:.2f}, {t['saved_ms_max']:.2f}]",
                        f"{t['saved_pct_median']:.1f}", pb['ranking'][runtime].index(b) + 1]
            table.append(row)
        lines += markdown_table(['block', 'eager saved ms', 'eager saved %', 'eager rank', 'ORT saved ms',
                                 'ORT saved %', 'ORT rank'], table)
        within = pb['spearman_within_runtime_across_repeats']
        fmt = {rt: 'n/a' if v is None else f'{v:.2f}' for rt, v in within.items()}
        lines += ['', f"Rank correlation (Spearman) eager vs ONNX Runtime: {pb['spearman_between_runtimes']:.2f}; "
                      f"each runtime with itself across repeats: eager {fmt['torch']}, ONNX Runtime "
                      f"{fmt['onnxruntime']}. Pairs in another order: {len(pb['order_flips'])}, beyond noise "
                      f"(min/max ranges apart in both runtimes): {len(pb['order_flips_beyond_noise'])}"
                      + (f" ({'; '.join(' vs '.join(p) for p in pb['order_flips_beyond_noise'])})"
                         if pb['order_flips_beyond_noise'] else '') + '.']
    return '\n'.join(lines) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_threads_argument(parser)
    parser.add_argument('--data', default=IMAGENET_SAMPLE, help='labelled images the exports are checked on')
    parser.add_argument('--max-images', type=int, default=None)
    parser.add_argument('--whole-batches', default='1,32')
    parser.add_argument('--block-batches', default='1,8', help="8 is the quickstart's latency batch")
    parser.add_argument('--block-repeats', type=int, default=5, help='repeats of the whole per-block measurement')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs per model in one measurement')
    parser.add_argument('--max-blocks', type=int, default=None, help='only the first N candidate blocks')
    parser.add_argument('--quick', action='store_true', help='smoke test: few repeats, blocks and images')
    parser.add_argument('--out', default=None, help='JSON path (default results/deploy.json, --quick: runs/)')
    args = parse_args(parser)
    if args.quick:
        args.max_images, args.block_repeats, args.repeats, args.max_blocks = 32, 2, 3, 3
        args.block_batches = '1'
    args.whole_batches = [int(b) for b in args.whole_batches.split(',')]
    args.block_batches = [int(b) for b in args.block_batches.split(',')]
    out = args.out or (os.path.join(ROOT, 'runs', 'bench_deploy_quick.json') if args.quick
                       else os.path.join(HERE, 'results', 'deploy.json'))
    onnx_dir = os.path.join(ROOT, 'runs', 'bench_deploy')
    os.makedirs(onnx_dir, exist_ok=True)

    teacher, cfg = lite0_teacher()
    student = drop_blocks(teacher, STUDENT_BLOCKS)
    blocks = find_blocks(teacher, cfg['input_size'])[:args.max_blocks]
    results = {'setup': {'date': datetime.date.today().isoformat(), 'threads': args.threads,
                         'machine': f'{platform.machine()}, {os.cpu_count()} cores', 'torch': torch.__version__,
                         'onnxruntime': onnxruntime.__version__, 'provider': 'CPUExecutionProvider',
                         'repeats': args.repeats, 'block_repeats': args.block_repeats, 'data': args.data,
                         'max_images': args.max_images, 'quick': args.quick, 'blocks': blocks,
                         'command': ' '.join(['python', os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
                         'load_average_start': os.getloadavg()[0]}}
    results['export'] = export_check({'teacher': teacher, 'student': student}, cfg, args, onnx_dir)
    student_dynamic = load_exported(os.path.join(onnx_dir, 'student.onnx'), threads=args.threads)
    int8 = {name: load_exported(os.path.join(onnx_dir, f'{name}_int8.onnx'), threads=args.threads)
            for name in ('teacher', 'student')}
    results['whole'] = whole_models(teacher, student, cfg, args, student_dynamic, int8)
    results['per_block'] = [per_block(teacher, blocks, cfg, args, b) for b in args.block_batches]
    results['setup']['load_average_end'] = os.getloadavg()[0]  # other jobs on the machine skew wall-clock times
    write_results(out, results)
    write_text(os.path.splitext(out)[0] + '.md', markdown(results))
    print(markdown(results))


if __name__ == '__main__':
    main()
