"""Does MiR finetuning on synthesized images help or hurt an ImageNet student, and what does it depend on?

    python benchmarks/bench_mir_data.py --run runs/quickstart_final [--variants NAME,...] [--threads 2]

Starts every variant from the same adaptor-folded student (``RUN/dropped``, written by a quickstart or
compress run), finetunes it by MiR (BatchNorm frozen, batch 32) on one image folder, and reports top-1 on
all of ../shared/data/imagenet-sample. Rows are cached in ``--out`` and skipped on a re-run, so a killed
run resumes. The control ``real64_noaug`` runs MiR on 64 real imagenet-sample images and is scored on
the other 936, against the adaptor-only student on the same 936. Synthesize the larger pools first, e.g.
``practise-df synth --model timm:tf_efficientnet_lite0 --weights W --out runs/mir_data/synth256
--num-images 256 --resolution 112 --iterations 120 --batch-size 64``, and ``runs/mir_data/synth224px``
with ``--num-images 64 --resolution 224 --iterations 120 --batch-size 32``.
"""
import argparse
import os
import sys
import time

from torch.utils.data import Subset

from practise_df import load_compressed
from synth.data import ImageFolderDataset, eval_transform, subsample, train_transform
from practise_df.finetune import FinetuneConfig, finetune
from practise_df.pipeline import DROPPED_DIR

from common import (IMAGENET_SAMPLE, ROOT, add_threads_argument, chosen_variants, lite0_teacher, parse_args,
                    read_results, sample_images, top1, write_results)

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (image folder relative to the repo, images used, augmentation, iterations, lr)
VARIANTS = {
    'synth64_rrc': ('{run}/synth', 64, 'rrc', 40, 0.005),  # what the quickstart does
    'synth64_noaug': ('{run}/synth', 64, 'none', 40, 0.005),
    'reference32_noaug': ('runs/bench_synth/reference', 32, 'none', 40, 0.005),
    'fast32_noaug': ('runs/bench_synth/fast', 32, 'none', 40, 0.005),
    'synth256_noaug': ('runs/mir_data/synth256', 256, 'none', 40, 0.005),
    'synth256_noaug_120it': ('runs/mir_data/synth256', 256, 'none', 120, 0.005),
    'synth224px64_noaug': ('runs/mir_data/synth224px', 64, 'none', 40, 0.005),  # synthesized at full resolution
    # control: 64 real images, scored on the other 936 (with the adaptor-only student on the same 936)
    'real64_noaug': ('{imagenet}', 64, 'none', 40, 0.005),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--run', default='runs/quickstart_final', help='a compress/quickstart output directory')
    parser.add_argument('--variants', default=','.join(VARIANTS), help=f'comma list of: {", ".join(VARIANTS)}')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'mir_data.json'))
    add_threads_argument(parser, default=2)
    args = parse_args(parser)
    variants = chosen_variants(parser, args.variants, VARIANTS)
    teacher, cfg = lite0_teacher()
    images, labels = sample_images(cfg)
    test_size = len(images)

    results = read_results(args.out, {'rows': {}})
    rows = results['rows']
    recovered = os.path.join(args.run, DROPPED_DIR)
    if 'adaptors_only' not in rows:
        rows['adaptors_only'] = {'top1': top1(load_compressed(recovered), images, labels), 'images': 0}
    for name in variants:
        if name in rows:
            print(f'{name}: cached {rows[name]["top1"]}')
            continue
        folder, n, aug, iterations, lr = VARIANTS[name]
        folder = os.path.join(ROOT, folder.format(run=args.run, imagenet=IMAGENET_SAMPLE))
        if not os.path.isdir(folder):
            print(f'{name}: skipped, {folder} does not exist (see the docstring)', file=sys.stderr)
            continue
        pool = ImageFolderDataset(folder, train_transform(cfg) if aug == 'rrc' else eval_transform(cfg))
        if len(pool) < n:
            raise SystemExit(f'{folder} holds {len(pool)} images, {name} needs {n}')
        data = Subset(pool, [pool.samples.index(s) for s in subsample(pool.samples, n, seed=0)])
        student = load_compressed(recovered)
        start = time.time()
        history = finetune(student, teacher, data, FinetuneConfig(loss='mir', steps=iterations, batch_size=32,
                                                                 lr=lr, freeze_bn=True, seed=0), progress=False)
        rows[name] = {'top1': top1(student, images, labels), 'images': n, 'augmentation': aug, 'iterations': iterations,
                      'lr': lr,
                      'folder': os.path.relpath(folder, ROOT), 'final_loss': history['loss'][-1],
                      'seconds': round(time.time() - start)}
        if os.path.samefile(folder, IMAGENET_SAMPLE):  # trained on test images: score the rest only
            heldout = set(range(test_size)) - set(data.indices)
            rows[name].update(top1_heldout=top1(student, images, labels, heldout), heldout_images=len(heldout),
                              adaptors_only_top1_heldout=top1(load_compressed(recovered), images, labels,
                                                              heldout))
        print(f'{name}: {rows[name]}', flush=True)
        if os.path.isfile(args.out):  # keep rows another run of this script wrote meanwhile
            rows.update({k: v for k, v in read_results(args.out)['rows'].items() if k not in rows})
        results.update(run=args.run, date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), threads=args.threads,
                       test_images=len(images))
        write_results(args.out, results)
    print(f'adaptors only: {rows["adaptors_only"]["top1"]}')


if __name__ == '__main__':
    main()
