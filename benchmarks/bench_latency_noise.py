"""Can the latency practise-df reports be trusted? The measurement routine (``compare_latency``) on the
quickstart's student, idle and under load, per-block rankings before and after, and one compress run
whose latency target is checked on the int8 ONNX file it ships.

    python benchmarks/bench_latency_noise.py [--measurements 5] [--block-repeats 3] [--out benchmarks/results]
    python benchmarks/bench_latency_noise.py --quick     # a smoke test of the script (a few minutes)

1. Whole model: teacher tf_efficientnet_lite0 against the quickstart's student (blocks.1.1 and blocks.4.2
   dropped; latency does not depend on the weights, so no scoring or finetuning is needed), at the
   quickstart's batch 8 on the CPU with the default ``repeats='auto'``. ``--measurements`` separate
   measurements on the machine as it is ("idle": run it when nothing else runs), then as many while this
   script keeps one core busy with a spin loop in a child process it starts and stops itself. Checks: the
   idle intervals overlap one another; under load each interval contains the median idle saving or the
   warning fired.
2. Per block: every candidate dropped alone, measured ``--block-repeats`` times with the old routine (10
   fixed interleaved rounds, saving = 1 - median(variant) / median(teacher)) and with the new one (auto
   repeats, median paired saving with its interval); the self-agreement of each routine is the mean
   Spearman correlation of the block rankings between its repeats.
3. ``practise-df compress --latency-reduction 0.15 --latency-runtime onnxruntime --export int8`` on lite0
   with crops of the out-of-domain photos (no scoring images from ImageNet), evaluated on imagenet-sample:
   the saving reached in ONNX Runtime with its interval, and the int8 file's top-1.

Results: ``--out``/latency_noise.json and latency_noise.md (``--quick``: runs/bench_latency_noise_quick.*).
"""
import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from common import IMAGENET_SAMPLE, ROOT, lite0_teacher
from scipy.stats import spearmanr

from practise_df import drop_blocks, find_blocks
from practise_df.latency import block_latency, compare_latency
from practise_df.models import efficientnet_lite0_weights
from practise_io import write_json_atomic, write_text_atomic

STUDENT_BLOCKS = ['blocks.1.1', 'blocks.4.2']  # the quickstart's choice
OOD_PHOTOS = os.path.join(ROOT, '..', 'shared', 'data', 'ood-photos')
SPIN = 'import os\nos.sched_setaffinity(0, {0}) if hasattr(os, "sched_setaffinity") else None\nwhile True: pass\n'


class BusyCore:
    """A child process spinning on one core (core 0 where the OS lets us pin it), stopped on exit."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, '-c', SPIN])
        time.sleep(1.0)  # let it reach full speed
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def whole_model(teacher, student, cfg, args):
    """``args.measurements`` comparisons idle, then as many under one busy core."""
    kw = dict(input_size=cfg['input_size'], batch_size=args.batch_size, warmup=3, max_seconds=args.max_seconds)
    rows = {'idle': [], 'loaded': []}
    for condition in ('idle', 'loaded'):
        with BusyCore() if condition == 'loaded' else _nothing():
            for i in range(args.measurements):
                result = compare_latency([teacher, student], seed=i, **kw)
                s = result.savings[0]
                rows[condition].append({'saved_pct': s.pct, 'low': s.low, 'high': s.high, 'runs': result.rounds,
                                        'seconds': round(result.seconds, 1), 'stopped': result.stopped,
                                        'teacher_ms': result.latencies[0].median_ms,
                                        'student_ms': result.latencies[1].median_ms, 'load': result.load,
                                        'warning': result.warning})
                print(f'{condition} {i}: {s.describe()} stopped by {result.stopped}; '
                      f"others {result.load['other_cores']} cores; warning: {result.warning}", flush=True)
    idle = rows['idle']
    idle_saving = statistics.median(r['saved_pct'] for r in idle)
    with_interval = [r for r in idle if r['low'] is not None]
    rows['idle_intervals_overlap'] = bool(with_interval) and \
        max(r['low'] for r in with_interval) <= min(r['high'] for r in with_interval)
    rows['idle_median_saving'] = idle_saving
    rows['loaded_ok'] = [(r['low'] is not None and r['low'] <= idle_saving <= r['high']) or bool(r['warning'])
                         for r in rows['loaded']]
    return rows


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def old_block_savings(teacher, blocks, cfg, args, seed):
    """The routine before issue 33: 10 fixed rounds, saving = 1 - median(variant) / median(teacher)."""
    variants = [teacher] + [drop_blocks(teacher, [b]) for b in blocks]
    lat = compare_latency(variants, cfg['input_size'], args.batch_size, warmup=3, repeats=10, seed=seed).latencies
    return {b: 100 * (1 - v.median_ms / lat[0].median_ms) for b, v in zip(blocks, lat[1:])}


def per_block(teacher, cfg, args):
    blocks = find_blocks(teacher, cfg['input_size'])
    if args.quick:
        blocks = blocks[:4]
    runs = {'old': [], 'new': []}
    for r in range(args.block_repeats):
        start = time.perf_counter()
        runs['old'].append(old_block_savings(teacher, blocks, cfg, args, seed=r))
        print(f'per-block old routine, repeat {r}: {time.perf_counter() - start:.0f} s', flush=True)
        start = time.perf_counter()
        new = block_latency(teacher, blocks, cfg['input_size'], args.batch_size, max_seconds=args.block_max_seconds,
                            seed=r)
        runs['new'].append({b: v['saved_pct'] for b, v in new['blocks'].items()})
        runs.setdefault('new_tables', []).append(new)
        print(f"per-block new routine, repeat {r}: {time.perf_counter() - start:.0f} s, {new['runs']} runs, "
              f"warning: {new['warning']}", flush=True)
    agreement = {}
    for name in ('old', 'new'):
        pairs = [spearmanr([a[b] for b in blocks], [c[b] for b in blocks]).statistic
                 for a, c in itertools.combinations(runs[name], 2)]
        agreement[name] = {'mean_spearman': statistics.mean(pairs) if pairs else None, 'pairs': pairs}
    return {'blocks': blocks, 'runs': runs, 'self_agreement': agreement}


def compress_run(args):
    out = args.run_dir
    cmd = [sys.executable, '-m', 'practise_df.cli', 'compress', '--model', 'timm:tf_efficientnet_lite0',
           '--weights', efficientnet_lite0_weights(), '--images', f'crops:{OOD_PHOTOS}',
           '--num-images', str(args.num_images), '--latency-reduction', '0.15', '--latency-runtime', 'onnxruntime',
           '--latency-batch-size', str(args.batch_size), '--export', 'int8', '--finetune-steps', '0',
           '--eval-data', IMAGENET_SAMPLE, '--output-dir', out, '--overwrite', '--json']
    if args.eval_images:
        cmd += ['--eval-max-images', str(args.eval_images)]
    cmd += args.compress_args
    print('$', ' '.join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {'command': cmd, 'returncode': proc.returncode, 'stderr_tail': proc.stderr[-3000:]}
    report = json.loads(proc.stdout)
    lat = report['latency']
    return {'command': cmd, 'seconds': round(time.perf_counter() - start), 'dropped': report['dropped_blocks'],
            'onnxruntime_saving': {k: lat.get(k) for k in ('saved_pct', 'saved_low', 'saved_high', 'runs', 'teacher_ms',
                                                           'student_ms', 'student', 'warning', 'load')},
            'top1': {'teacher': report['eval']['teacher'].get('top1'),
                     'student (PyTorch)': report['eval']['student'].get('top1'),
                     'int8 file': report['eval']['exported'].get('top1')}}


def markdown(result) -> str:
    lines = [f"# Latency noise ({result['date']}, {result['machine']})", '', '## Whole model (quickstart student)',
             '', '| condition | saving % | 95% interval | runs | other cores | warning |', '|---|---|---|---|---|---|']
    whole = result.get('whole_model')
    if whole:
        for cond in ('idle', 'loaded'):
            for r in whole[cond]:
                interval = 'n/a' if r['low'] is None else f"{r['low']:.1f} to {r['high']:.1f}"
                lines.append(f"| {cond} | {r['saved_pct']:.1f} | {interval} | {r['runs']} | "
                             f"{r['load']['other_cores']} | {r['warning'] or ''} |")
        lines += ['', f"idle intervals overlap: {whole['idle_intervals_overlap']}; under load, interval contains the "
                      f"idle saving ({whole['idle_median_saving']:.1f}%) or warned: {whole['loaded_ok']}"]
    blocks = result.get('per_block')
    if blocks:
        lines += ['', '## Per-block self-agreement (mean Spearman between repeats)', '']
        for name, a in blocks['self_agreement'].items():
            lines.append(f"- {name}: {a['mean_spearman']}")
    comp = result.get('compress')
    if comp:
        lines += ['', '## compress --latency-reduction 0.15 --latency-runtime onnxruntime --export int8', '',
                  '```', json.dumps({k: v for k, v in comp.items() if k != 'command'}, indent=1), '```']
    return '\n'.join(lines) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--measurements', type=int, default=5, help='whole-model measurements idle, and as many loaded')
    parser.add_argument('--batch-size', type=int, default=8, help="the quickstart's latency batch")
    parser.add_argument('--max-seconds', type=float, default=60.0, help='time cap of each whole-model measurement')
    parser.add_argument('--block-repeats', type=int, default=3, help='per-block tables per routine')
    parser.add_argument('--block-max-seconds', type=float, default=300.0, help='time cap of each new per-block table')
    parser.add_argument('--num-images', type=int, default=64, help='compress: crops of the ood photos')
    parser.add_argument('--eval-images', type=int, default=None, help='compress: imagenet-sample subset (default all)')
    parser.add_argument('--skip', default='', help='comma list of parts to skip: whole,blocks,compress')
    parser.add_argument('--quick', action='store_true', help='small sizes: checks that the script works')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'))
    parser.add_argument('compress_args', nargs='*', help='extra compress flags after --')
    args = parser.parse_args()
    if args.quick:
        args.measurements, args.max_seconds, args.block_repeats, args.block_max_seconds = 2, 10.0, 2, 20.0
        args.batch_size, args.num_images, args.eval_images = 1, 16, 50
        args.compress_args += ['--adaptor-steps', '5', '--latency-max-seconds', '10']
        args.out = os.path.join(ROOT, 'runs')
    name = 'bench_latency_noise_quick' if args.quick else 'latency_noise'
    args.run_dir = os.path.join(ROOT, 'runs', name + '_compress')
    skip = set(args.skip.split(','))
    teacher, cfg = lite0_teacher()
    student = drop_blocks(teacher, STUDENT_BLOCKS)
    result = {'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
              'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch '
                         f'{torch.__version__}, {torch.get_num_threads()} threads',
              'args': {k: v for k, v in vars(args).items() if k != 'compress_args'}}
    if 'whole' not in skip:
        result['whole_model'] = whole_model(teacher, student, cfg, args)
    if 'blocks' not in skip:
        result['per_block'] = per_block(teacher, cfg, args)
    if 'compress' not in skip:
        result['compress'] = compress_run(args)
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, name + '.json'), result)
    write_text_atomic(os.path.join(args.out, name + '.md'), markdown(result))
    print(markdown(result))


if __name__ == '__main__':
    main()
