"""Does data-free recovery cost robustness? Teacher vs students recovered on synthesized, out-of-domain
and a few real images, at the same latency saved (issue 8).

Teacher: tf_efficientnet_lite0 with its offline ImageNet weights. Every student drops the same blocks
(default: the quickstart's PRACTISE choice), so all have the same latency; only the recovery images
differ:

    synth  BatchNorm-inversion images of the teacher (synth.synthesize, fast preset)
    ood    Fashion-MNIST (Debian package dataset-fashion-mnist) upsampled to RGB
    real   a few real ImageNet images of imagenet-sample, disjoint from the evaluation images
    none   no recovery: the blocks dropped and nothing fitted (the lite0 quickstart's student)

Each recovered student: adaptors fitted around the gaps and folded (drop_and_recover), then MiR
finetuning with BatchNorm statistics frozen. Then practise_df.robustness on held-out imagenet-sample
images: clean top-1, mean corruption top-1, mCE and relative mCE with the teacher as baseline,
agreement; the students not evaluated yet share one pass (each batch corrupted and the teacher run
once). Resumable: students and evaluations are cached under --work; re-running skips what is done.

    python benchmarks/bench_robustness.py --threads 1
"""
import argparse
import json
import os
import platform
import sys
import time

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from practise_df import drop_and_recover, drop_blocks, load_compressed, save_compressed
from synth.data import ImageFolderDataset, eval_transform
from practise_df.finetune import FinetuneConfig, finetune
from practise_df.latency import measure_latencies
from practise_df.robustness import evaluate_robustness, save_heatmap

from common import (IMAGENET_SAMPLE, FashionMNISTRGB, add_threads_argument, lite0_teacher, load_fmnist,
                    markdown_table, parse_args, read_results, write_results, write_text)
SOURCES = ('synth', 'ood', 'real', 'none')


def recovery_images(source, teacher, data_config, sample, train_idx, args):
    """``args.num_images`` preprocessed images (N, 3, H, W) of one source."""
    transform = eval_transform(data_config)
    if source == 'real':
        return torch.stack([sample[i][0] for i in train_idx])
    if source == 'ood':
        images, _ = load_fmnist('train')
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:args.num_images]
        data = FashionMNISTRGB(images[pick], transform)
        return torch.stack([data[i][0] for i in range(len(data))])
    from synth import synthesize
    out = os.path.join(args.work, 'synth')
    size = (3, args.synth_resolution, args.synth_resolution)  # synthesised small, resized by `transform` below
    synthesize(teacher, out, args.num_images, data_config={**data_config, 'input_size': size},
               steps=args.synth_iterations, batch_size=64, seed=args.seed, preset='fast')
    data = ImageFolderDataset(out, transform)
    return torch.stack([data[i][0] for i in range(len(data))])


def student_for(source, teacher, data_config, sample, train_idx, args):
    path = os.path.join(args.work, f'student_{source}')
    if os.path.isfile(os.path.join(path, 'model.safetensors')):
        return load_compressed(path), json.load(open(os.path.join(path, 'timing.json')))
    if source == 'none':
        return drop_blocks(teacher, args.blocks), {'recover_s': 0.0}
    start = time.perf_counter()
    images = recovery_images(source, teacher, data_config, sample, train_idx, args)
    student = drop_and_recover(teacher, args.blocks, images[:args.score_images], seed=args.seed)
    config = FinetuneConfig(steps=args.finetune_iters, batch_size=args.batch_size, lr=args.lr, freeze_bn=True,
                            seed=args.seed)
    history = finetune(student, teacher, TensorDataset(images, torch.full((len(images),), -1)), config)
    timing = {'recover_s': time.perf_counter() - start, 'final_loss': history['loss'][-1]}
    save_compressed(student.cpu(), path, data_config=data_config, overwrite=True)
    write_results(os.path.join(path, 'timing.json'), timing)
    return student, timing


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--blocks', default='blocks.4.2,blocks.1.1', help='blocks every student drops')
    p.add_argument('--sources', default=','.join(SOURCES))
    p.add_argument('--num-images', type=int, default=64, help='recovery images per source')
    p.add_argument('--score-images', type=int, default=48, help='of which the adaptors are fitted on')
    p.add_argument('--synth-resolution', type=int, default=112)
    p.add_argument('--synth-iterations', type=int, default=120)
    p.add_argument('--finetune-iters', type=int, default=40)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=0.005)
    p.add_argument('--eval-images', type=int, default=100, help='held-out imagenet-sample images to corrupt')
    p.add_argument('--corruptions', default='all')
    p.add_argument('--severities', default='1,3,5')
    p.add_argument('--seed', type=int, default=0)
    add_threads_argument(p)
    p.add_argument('--work', default='runs/bench_robustness')
    p.add_argument('--out', default='benchmarks/results/robustness.json')
    p.add_argument('--docs', default='docs')
    args = parse_args(p)
    args.blocks = [b.strip() for b in args.blocks.split(',') if b.strip()]
    if not os.path.isdir(IMAGENET_SAMPLE):
        sys.exit(f'{IMAGENET_SAMPLE} not found: this benchmark evaluates on the imagenet-sample folder.')
    os.makedirs(args.work, exist_ok=True)

    teacher, data_config = lite0_teacher()
    sample = ImageFolderDataset(IMAGENET_SAMPLE, eval_transform(data_config))
    order = torch.randperm(len(sample), generator=torch.Generator().manual_seed(args.seed)).tolist()
    eval_idx, train_idx = sorted(order[:args.eval_images]), order[args.eval_images:args.eval_images + args.num_images]
    raw = ImageFolderDataset(IMAGENET_SAMPLE, eval_transform(data_config, normalize=False))
    loader = DataLoader(Subset(raw, eval_idx), batch_size=25)

    results = read_results(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ('threads', 'out', 'docs', 'work', 'sources')}
    if results.get('settings', settings) != settings:
        sys.exit(f'{args.out} holds results of other settings; move it away or pass the same arguments.')
    results.update(settings=settings, machine=f'{platform.machine()}, {os.cpu_count()} CPU cores, torch '
                   f'{torch.__version__}, {args.threads} thread(s)', students=results.get('students', {}))

    students, timings = {}, {}
    for source in [s.strip() for s in args.sources.split(',') if s.strip()]:
        if source not in results['students']:
            print(f'--- {source}', file=sys.stderr, flush=True)
            students[source], timings[source] = student_for(source, teacher, data_config, sample, train_idx, args)
    if students:
        if 'latency' not in results:  # every student drops the same blocks: one measurement
            t, s = measure_latencies([teacher, next(iter(students.values()))], data_config['input_size'],
                                     batch_size=32, repeats=5)
            results['latency'] = {'batch_size': 32, 'teacher_ms': t.median_ms, 'student_ms': s.median_ms,
                                  'saved_pct': 100 * (1 - s.median_ms / t.median_ms)}
        start = time.perf_counter()
        evaluated = evaluate_robustness(students, loader, data_config['mean'], data_config['std'], teacher=teacher,
                                        corruptions=args.corruptions, severities=args.severities, seed=args.seed)
        for source, r in evaluated.items():
            r['eval_s'] = time.perf_counter() - start  # the shared pass, for all of them
            r['evaluated_with'] = sorted(students)
            r.update(timings[source])
            what = 'not recovered' if source == 'none' else f'recovered on {source} images'
            r['heatmap'] = save_heatmap(r, os.path.join(args.docs, f'robustness_{source}.png'),
                                        title=f'lite0 minus {len(args.blocks)} blocks, {what}')
            results['students'][source] = r
        results['date'] = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
        write_results(args.out, results)
    write_markdown(results, os.path.splitext(args.out)[0] + '.md')


def write_markdown(results, path):
    lat = results.get('latency', {})
    table = []
    first = next(iter(results['students'].values()), None)
    if first:
        s = first['summary']
        table.append(['teacher', '-', 0, f"{first['clean']['teacher_top1']:.1f}",
                      f"{s['teacher_mean_corruption_top1']:.1f}", 100, 100, '-'])
    for source, r in results['students'].items():
        s = r['summary']
        table.append(['student', source, f"{lat.get('saved_pct', float('nan')):.1f}", f"{r['clean']['top1']:.1f}",
                      f"{s['mean_corruption_top1']:.1f}", f"{s['mce']:.1f}", f"{s['relative_mce']:.1f}",
                      f"{r['clean']['agreement']:.1f} / {s['mean_corruption_agreement']:.1f}"])
    lines = markdown_table(['model', 'recovered on', 'latency saved %', 'clean top-1', 'mean corruption top-1',
                            'mCE vs teacher %', 'relative mCE %', 'agreement clean / corrupted %'], table, 'llrrrrrr')
    st = results['settings']
    head = (f"Teacher tf_efficientnet_lite0 (offline weights); every student drops {', '.join(st['blocks'])}; "
            f"{st['num_images']} recovery images per source (none: no recovery), adaptors fitted and folded, MiR "
            f"{st['finetune_iters']} iterations (batch {st['batch_size']}, lr {st['lr']}, BatchNorm frozen). "
            f"Evaluation: {st['eval_images']} held-out imagenet-sample images, corruptions {st['corruptions']}, "
            f"severities {st['severities']}, seed {st['seed']}. Latency: batch {lat.get('batch_size')}, 224 px, CPU. "
            f"{results['machine']}; {results.get('date', '')}.\n\n")
    write_text(path, head + '\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
