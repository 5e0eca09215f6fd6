"""Do more processes only change the time? tf_efficientnet_lite0 block scoring (its 9 candidate blocks) and a
robustness sweep, on 1 process against N processes (default 2) under ``accelerate launch``, each process with
the same thread count (default 1): wall time of each stage, the ratio, and whether the scores and the
robustness numbers are the same (issue 32; target >= 1.6x with 2 processes on a 2-core machine).

Each launch runs this file with ``--worker``: it loads the teacher and the images, then times each stage
between two barriers (so loading is not counted) and the main process writes its numbers. Per-block latency
is a fixed table (scoring's cost does not depend on it). The load average (os.getloadavg) is recorded before
and after each launch: on a shared machine the timings mean little when it exceeds the cores.

    python benchmarks/bench_scale_out.py --out runs/scale_out.json
    # GPUs: --processes $(nvidia-smi -L | wc -l) --device cuda (one GPU per process)
"""
import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

from common import IMAGENET_SAMPLE, add_threads_argument, lite0_teacher, read_results, write_results

from practise_df import drop_blocks, find_blocks, score_blocks
from practise_df._distributed import process_state
from practise_df.robustness import evaluate_folder_robustness
from practise_df.scoring import ESTIMATORS
from synth.data import load_image_tensor

HERE = os.path.abspath(__file__)


def worker(args):
    torch.set_num_threads(args.threads)
    state = process_state()  # joins the processes in one group on a CPU-only machine too
    device = state.device if args.device == 'cuda' else torch.device('cpu')
    teacher, data_config = lite0_teacher()
    teacher.to(device)
    images, _ = load_image_tensor(IMAGENET_SAMPLE, data_config, max_images=args.score_images + args.heldout_images)
    train, held = images[:args.score_images], images[args.score_images:]
    blocks = find_blocks(teacher, data_config['input_size'])
    latency = {b: {'saved_ms': 1.0, 'saved_pct': 1.0} for b in blocks}
    settings = dataclasses.replace(ESTIMATORS['fast'], steps=args.adaptor_steps)
    result = {'processes': state.num_processes, 'threads': torch.get_num_threads(), 'device': str(device)}

    state.wait_for_everyone()
    start = time.perf_counter()
    scores = score_blocks(teacher, train, held, blocks=blocks, settings=settings, latency=latency, progress=False)
    state.wait_for_everyone()
    result['scoring_s'] = time.perf_counter() - start
    result['scores'] = {s.block: s.recoverability for s in scores}

    student = drop_blocks(teacher, [scores[0].block]).to(device)
    start = time.perf_counter()
    robust = evaluate_folder_robustness(student, IMAGENET_SAMPLE, data_config, teacher=teacher,
                                        corruptions=args.corruptions, severities=args.severities,
                                        max_images=args.robustness_images, batch_size=args.batch_size,
                                        device=str(device), progress=False)
    state.wait_for_everyone()
    result['robustness_s'] = time.perf_counter() - start
    result['robustness'] = {'images': robust['images'], 'clean': robust['clean'], 'summary': robust['summary']}
    if state.is_main_process:
        write_results(args.worker, result)


def launch(args, processes: int, out: str) -> dict:
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', '--num_processes', str(processes)]
    cmd += ['--multi_gpu'] if processes > 1 else (['--cpu'] if args.device == 'cpu' else [])
    own = ['--threads', args.threads, '--device', args.device, '--score-images', args.score_images,
           '--heldout-images', args.heldout_images, '--adaptor-steps', args.adaptor_steps,
           '--robustness-images', args.robustness_images, '--batch-size', args.batch_size,
           '--corruptions', args.corruptions, '--severities', args.severities, '--worker', out]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_CBWR=os.environ.get('MKL_CBWR', 'AUTO'))
    if args.device == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''
    load_before = os.getloadavg()
    subprocess.run(cmd + [HERE, *map(str, own)], check=True, env=env)
    result = read_results(out)
    result['loadavg_before'], result['loadavg_after'] = load_before, os.getloadavg()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--processes', type=int, default=2, help='compared with 1 process')
    add_threads_argument(parser, help='torch threads per process')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--score-images', type=int, default=64, help='images the adaptors are fitted on')
    parser.add_argument('--heldout-images', type=int, default=64)
    parser.add_argument('--adaptor-steps', type=int, default=60, help="the fast estimator's default")
    parser.add_argument('--robustness-images', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--corruptions', default='gaussian_noise,defocus_blur,fog,jpeg_compression')
    parser.add_argument('--severities', default='1,3,5')
    parser.add_argument('--out', default='runs/scale_out.json')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:  # each launch's numbers; all of them end up in --out
        runs = {n: launch(args, n, os.path.join(tmp, f'{n}.json')) for n in (1, args.processes)}
    one, many = runs[1], runs[args.processes]
    same_scores = one['scores'].keys() == many['scores'].keys() and all(
        abs(one['scores'][b] - many['scores'][b]) <= 1e-5 * abs(one['scores'][b]) + 1e-9 for b in one['scores'])
    summary = {
        'command': ' '.join(['python'] + sys.argv), 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
        'runs': runs,
        'scoring_speedup': one['scoring_s'] / many['scoring_s'],
        'robustness_speedup': one['robustness_s'] / many['robustness_s'],
        'same_scores': same_scores,
        'same_selection_order': list(one['scores']) == list(many['scores']),
        'same_robustness': one['robustness'] == many['robustness'],
    }
    write_results(args.out, summary)
    for n, r in runs.items():
        print(f"{n} process(es) x {r['threads']} thread(s): scoring {r['scoring_s']:.1f} s, robustness "
              f"{r['robustness_s']:.1f} s, load {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f}")
    print(f"speed-up: scoring {summary['scoring_speedup']:.2f}x, robustness {summary['robustness_speedup']:.2f}x; "
          f"same scores {same_scores}, same order {summary['same_selection_order']}, "
          f"same robustness {summary['same_robustness']}")


if __name__ == '__main__':
    main()
