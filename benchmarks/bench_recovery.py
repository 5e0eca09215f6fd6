"""Do the adaptors fitted around dropped blocks recover an ImageNet student's top-1, and on which images?

    python benchmarks/bench_recovery.py [--blocks "B1,B2;B3,..."] [--variants NAME,...] [--single] [--threads 1]

For each block set (default: the quickstart's choice at ~15% latency saved, and PRACTISE's choice at the
25% target of Track A, which measured 20.3%), tf_efficientnet_lite0 loses those blocks and is then
either left as is (``drop``) or gets identity-initialised adaptors fitted on a tiny image set and folded
(``practise_df.drop_and_recover``, as ``practise-df compress`` does before finetuning). Each variant
reports top-1 on all 1000 imagenet-sample images; the control ``adaptors_real_64`` fits on 64 real
images and is scored, with ``drop``, on the other 936. ``--single`` adds the top-1 of dropping each
candidate block alone (uses the test labels: an analysis of what block choice can reach, not a method).
Synthesized images: ``--synth`` (default the quickstart's 64 images at 112 px) and
``runs/mir_data/synth224px`` (see benchmarks/bench_mir_data.py for the command that makes it).
Rows are cached in ``--out`` and skipped on a re-run, so a killed run resumes.
"""
import argparse
import os
import sys
import time

import torch

from practise_df import drop_and_recover, drop_blocks, find_blocks
from synth.data import load_image_tensor
from practise_df.scoring import ESTIMATORS, RecoverySettings

from common import (IMAGENET_SAMPLE, ROOT, add_threads_argument, chosen_variants, lite0_teacher, parse_args,
                    read_results, sample_images, top1, write_results)

HERE = os.path.dirname(os.path.abspath(__file__))

BLOCK_SETS = ('blocks.4.2,blocks.1.1;'  # quickstart, 15.2% saved
              'blocks.1.1,blocks.3.2,blocks.3.1,blocks.2.1,blocks.4.2')  # Track A PRACTISE, 25% target, 20.3% saved
FAST = ESTIMATORS['fast']  # what compress uses: Adam 1e-3, 60 iterations, batch 32, images at half resolution
# name: (image folder, images, recovery settings); None = blocks dropped, nothing fitted
VARIANTS = {
    'drop': None,
    'adaptors_fast_32': ('{synth}', 32, FAST),  # the quickstart: 32 of its synthesized images
    'adaptors_fast_64': ('{synth}', 64, FAST),
    'adaptors_lr1e-4_32': ('{synth}', 32, RecoverySettings(lr=1e-4)),
    'adaptors_fullres_64': ('runs/mir_data/synth224px', 64, RecoverySettings(resolution_scale=1.0)),
    'adaptors_real_64': ('{imagenet}', 64, RecoverySettings(resolution_scale=1.0)),  # control: real images
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--blocks', default=BLOCK_SETS, help='block sets, ";" between sets, "," inside one')
    parser.add_argument('--variants', default=','.join(VARIANTS), help=f'comma list of: {", ".join(VARIANTS)}')
    parser.add_argument('--single', action='store_true', help='also drop each candidate block alone')
    parser.add_argument('--synth', default='runs/quickstart_adaptors/synth', help='synthesized images (folder)')
    parser.add_argument('--out', default=os.path.join(HERE, 'results', 'recovery.json'))
    add_threads_argument(parser)
    args = parse_args(parser)
    variants = chosen_variants(parser, args.variants, VARIANTS)

    teacher, cfg = lite0_teacher()
    images, labels = sample_images(cfg)
    candidates = find_blocks(teacher, tuple(cfg['input_size']))
    results = read_results(args.out, {'rows': {}})
    rows = results['rows']

    def save(key, row):
        rows[key] = row
        print(f'{key}: {row}', flush=True)
        results.update(date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), threads=args.threads,
                       test_images=len(images), synth=args.synth, command=' '.join(['python'] + sys.argv))
        write_results(args.out, results)

    if 'teacher' not in rows:
        save('teacher', {'top1': top1(teacher, images, labels)})
    for blocks in [b.split(',') for b in args.blocks.split(';')]:
        for name in variants:
            key = f"{','.join(blocks)}|{name}"
            if key in rows:
                continue
            start = time.time()
            if VARIANTS[name] is None:
                save(key, {'top1': top1(drop_blocks(teacher, blocks, candidates=candidates), images, labels)})
                continue
            folder, n, settings = VARIANTS[name]
            folder = os.path.join(ROOT, folder.format(synth=args.synth, imagenet=IMAGENET_SAMPLE))
            if not os.path.isdir(folder):
                print(f'{key}: skipped, {folder} does not exist (see the docstring)', file=sys.stderr)
                continue
            real = os.path.samefile(folder, IMAGENET_SAMPLE)
            if real:  # fit on n real images (the same draw as below), score on the others
                fit_idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
                fit = images[fit_idx]
            else:
                fit, _ = load_image_tensor(folder, cfg, max_images=n, seed=0)
                if len(fit) < n:
                    raise SystemExit(f'{folder} holds {len(fit)} images, {name} needs {n}')
            student = drop_and_recover(teacher, blocks, fit, settings=settings, seed=0)
            row = {'top1': top1(student, images, labels), 'images': n, 'folder': os.path.relpath(folder, ROOT),
                   'settings': vars(settings), 'seconds': round(time.time() - start)}
            if real:
                heldout = set(range(len(images))) - set(fit_idx.tolist())
                row.update(top1_heldout=top1(student, images, labels, heldout), heldout_images=len(heldout),
                           drop_top1_heldout=top1(drop_blocks(teacher, blocks, candidates=candidates), images,
                                                  labels, heldout))
            save(key, row)
    if args.single:
        for block in candidates:
            if f'single|{block}' not in rows:
                save(f'single|{block}', {'top1': top1(drop_blocks(teacher, [block], candidates=candidates),
                                                      images, labels)})


if __name__ == '__main__':
    main()
