"""practise_df.corruptions on an accelerator: fidelity and throughput, and a whole robustness pass.

The companion of ``bench_corruptions.py``, which runs the reference ``imagecorruptions`` (numpy, one image at a
time, CPU only) and ours side by side on this project's CPU and writes ``benchmarks/results/corruptions.json``.
Here ours runs on ``--device`` with a generator on that device, on the same images (the same seeded subset of
``imagenet-sample``, resized and centre-cropped to 224 px as uint8) and the same seeds, and is compared with the
reference's top-1 and images/s from that file:

- fidelity: top-1 of tf_efficientnet_lite0 (offline ImageNet weights, on the device) per corruption, averaged over
  the severities, against the reference's; faithful within 2 points, as on the CPU;
- throughput: corrupted images per second, corruption only, images already on the device, at each
  ``--batch-sizes`` (the clock stops after the device synchronises);
- a whole ``evaluate_robustness`` pass (every corruption x severity, the teacher and a student with the
  quickstart's two blocks dropped) over a DataLoader of the image files, timed end to end.

    python benchmarks/bench_corruptions_device.py --device cuda --out benchmarks/results/corruptions_cuda.json
    python benchmarks/bench_corruptions_device.py --device cpu --skip-fidelity --threads 2 \
        --out benchmarks/results/corruptions_cpu_pass.json          # the robustness pass on this CPU, to compare

``--data`` may also be a folder holding only the chosen images under numeric class folders (``0042/...``, the
label), e.g. made by ``--export DIR`` on a machine that has the whole sample: then the labels are kept.
"""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import time

import torch
from torch.utils.data import DataLoader

from bench_corruptions import (FAITHFUL_POINTS, PROCEDURAL, chosen_samples, load_images, procedural_frost,
                                         to_float, top1)
from practise_df import corruptions as C
from practise_df import drop_blocks
from synth.data import ImageFolderDataset, eval_transform, subsample
from practise_df.robustness import evaluate_robustness

from common import (IMAGENET_SAMPLE, RESULTS, ROOT, add_threads_argument, lite0_teacher, markdown_table, parse_args,
                    read_results, write_results, write_text)
QUICKSTART_DROPPED = ['blocks.4.2', 'blocks.1.1']  # the lite0 quickstart's choice (BENCHMARKS.md)


def sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def images_per_second(images: torch.Tensor, name: str, severity: int, batch_size: int, seed: int,
                      min_seconds: float = 0.2) -> float:
    """Corrupt batches of ``batch_size`` (tiled from ``images``) until ``min_seconds`` have passed (at least 3)."""
    device = images.device
    batch = images[torch.arange(batch_size, device=device) % len(images)]
    gen = torch.Generator(device=device).manual_seed(seed)
    C.corrupt(batch, name, severity, gen)  # warm-up: kernels, caches, cuFFT plans
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        C.corrupt(batch, name, severity, gen)
        calls += 1
        sync(device)
    return calls * batch_size / (time.perf_counter() - start)


def export_images(folder: str, n: int, seed: int, out: str):
    """Copy the ``n`` chosen images (the subset load_images takes) under numeric class folders, labels kept."""
    samples = chosen_samples(folder, n, seed)
    for path, label in samples:
        os.makedirs(os.path.join(out, f'{label:04d}'), exist_ok=True)
        shutil.copy(path, os.path.join(out, f'{label:04d}', os.path.basename(path)))
    print(f'{len(samples)} images -> {out}')


def fidelity_and_speed(model, data_config, args, device, reference: dict) -> dict:
    images_u8, labels = load_images(args.data, args.images, data_config, args.seed)
    clean = to_float(images_u8).to(device)
    labels = labels.to(device)
    rows = {'clean_top1': top1(model, clean, labels, data_config), 'corruptions': {}}
    tasks = [(n, n, False) for n in args.corruptions]
    if 'frost' in args.corruptions and C.FROST_DIR is not None:
        tasks.append((PROCEDURAL, 'frost', True))
    for key, name, procedural in tasks:
        per_sev = {}
        with procedural_frost(procedural):
            for sev in C.SEVERITIES:
                seed = args.seed * 1000 + C.CORRUPTIONS.index(name) * 10 + sev  # bench_corruptions' seeds
                gen = torch.Generator(device=device).manual_seed(seed)
                corrupted = torch.cat([C.corrupt(clean[i:i + 64], name, sev, gen) for i in range(0, len(clean), 64)])
                per_sev[str(sev)] = {'ours_top1': top1(model, corrupted, labels, data_config),
                                     'images_per_s': {str(b): images_per_second(clean, name, sev, b, seed)
                                                      for b in args.batch_sizes}}
        ours = sum(v['ours_top1'] for v in per_sev.values()) / len(per_sev)
        row = {'ours_top1': ours, 'severities': per_sev,
               # images/s over all severities: total images / total time
               'ours_images_per_s': {str(b): len(per_sev) / sum(1 / v['images_per_s'][str(b)] for v in per_sev.values())
                                     for b in args.batch_sizes}}
        add_reference(row, name, reference)
        rows['corruptions'][key] = row
        print(f"{key:18s} ours {ours:5.1f}%  reference {row.get('ref_top1', float('nan')):5.1f}%  "
              + '  '.join(f"b{b}: {row['ours_images_per_s'][str(b)]:.0f} img/s" for b in args.batch_sizes), flush=True)
    return rows


def add_reference(row: dict, name: str, reference: dict):
    """The reference's top-1 (mean of severities 1-5) and images/s for corruption ``name``, and the difference."""
    ref_sev = reference.get('corruptions', {}).get(name, {})
    if all(str(s) in ref_sev and 'ref_top1' in ref_sev[str(s)] for s in C.SEVERITIES):
        row['ref_top1'] = sum(ref_sev[str(s)]['ref_top1'] for s in C.SEVERITIES) / len(C.SEVERITIES)
        row['diff'] = row['ours_top1'] - row['ref_top1']
        row['faithful'] = abs(row['diff']) <= FAITHFUL_POINTS
        row['ref_images_per_s'] = reference.get('summary', {}).get(name, {}).get('ref_images_per_s')


def save(results: dict, path: str):
    write_results(path, results)
    write_text(os.path.splitext(path)[0] + '.md', render_markdown(results))


def robustness_pass(teacher, student, data_config, args, device) -> dict:
    """evaluate_robustness over every corruption and severity, teacher + one student, from the image files."""
    dataset = ImageFolderDataset(args.data, eval_transform(data_config, normalize=False))
    if args.images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, subsample(list(range(len(dataset))), args.images, args.seed))
    loader = DataLoader(dataset, batch_size=args.pass_batch_size, num_workers=args.workers)
    sync(device)
    start = time.perf_counter()
    result = evaluate_robustness({'student': student}, loader, data_config['mean'], data_config['std'],
                                 teacher=teacher, corruptions=args.corruptions, device=str(device),
                                 progress=False)['student']
    sync(device)
    seconds = time.perf_counter() - start
    corrupted = result['images'] * len(args.corruptions) * len(C.SEVERITIES)
    summary = result['summary']
    print(f'robustness pass: {result["images"]} images x {len(args.corruptions) * len(C.SEVERITIES)} in '
          f'{seconds:.1f} s ({corrupted / seconds:.0f} corrupted images/s through teacher + student)', flush=True)
    return {'images': result['images'], 'corruptions': len(args.corruptions), 'seconds': seconds,
            'corrupted_images_per_s': corrupted / seconds,
            'batch_size': args.pass_batch_size, 'workers': args.workers, 'student_dropped': QUICKSTART_DROPPED,
            'clean_top1': result['clean']['top1'], 'teacher_clean_top1': result['clean']['teacher_top1'],
            'mean_corruption_top1': summary['mean_corruption_top1'],
            'teacher_mean_corruption_top1': summary['teacher_mean_corruption_top1'],
            'relative_mce': summary.get('relative_mce')}


def render_markdown(results: dict) -> str:
    s = results['setup']
    lines = [f"# practise_df.corruptions on {s['device_name']}", '',
             f"Ours on `{s['device']}` ({s['device_name']}, torch {s['torch']}, kornia {s['kornia']}), generator on "
             f"the device. Frost: {s['frost_source']}.", '']
    if 'fidelity' in results:
        lines[-2] += (f" The reference (imagecorruptions, numpy, one image at a time, CPU only): top-1 and images/s "
                      f"as measured on the project's CPU (1 thread) in `{s['reference']}`, on the same {s['images']} "
                      f"images with the same seeds.")
    fid = results.get('fidelity')
    if fid:
        bs = [str(b) for b in s['batch_sizes']]
        lines += [f"Clean top-1 on the device: **{fid['clean_top1']:.1f}%**.", '']
        table = []
        for name, r in fid['corruptions'].items():
            ref_speed = r.get('ref_images_per_s') or float('nan')
            speed_up = max(r['ours_images_per_s'].values()) / ref_speed
            table.append([name, f"{r.get('ref_top1', float('nan')):.1f}", f"{r['ours_top1']:.1f}",
                          f"{r.get('diff', float('nan')):+.1f}", 'yes' if r.get('faithful') else 'no',
                          f"{ref_speed:.0f}", *(f"{r['ours_images_per_s'][b]:.0f}" for b in bs), f"{speed_up:.0f}x"])
        header = ['corruption', 'reference top-1 (CPU)', 'ours top-1 (device)', 'diff', 'faithful',
                  'reference img/s (CPU, 1 thread)', *(f'ours img/s, batch {b}' for b in bs), 'speed-up']
        lines += markdown_table(header, table, 'lrrrcr' + 'r' * len(bs) + 'r')
        core = [n for n in fid['corruptions'] if n != PROCEDURAL and fid['corruptions'][n].get('ref_images_per_s')]
        ref_all = len(core) / sum(1 / fid['corruptions'][n]['ref_images_per_s'] for n in core)
        for b in bs:
            ours_all = len(core) / sum(1 / fid['corruptions'][n]['ours_images_per_s'][b] for n in core)
            lines.append('')
            lines.append(f"All {len(core)} corruptions, equal share of images, batch {b}: ours {ours_all:.0f} img/s "
                         f"against the reference's {ref_all:.0f} img/s on the CPU ({ours_all / ref_all:.0f}x).")
    rp = results.get('robustness_pass')
    if rp:
        lines += ['', f"Whole robustness pass (`evaluate_robustness`, {rp['corruptions']} corruptions x 5 severities, "
                      f"teacher + student "
                      f"with {', '.join(rp['student_dropped'])} dropped, DataLoader batch {rp['batch_size']}, "
                      f"{rp['workers']} workers): {rp['images']} images in {rp['seconds']:.1f} s, "
                      f"**{rp['corrupted_images_per_s']:.0f} corrupted images/s** through both models. Student clean "
                      f"top-1 {rp['clean_top1']:.1f}% (teacher {rp['teacher_clean_top1']:.1f}), mean corruption "
                      f"{rp['mean_corruption_top1']:.1f}% (teacher {rp['teacher_mean_corruption_top1']:.1f})."]
    lines += ['', f"Command: `{s['command']}` ({s['date']})."]
    if 'reference_refreshed' in s:
        lines[-1] += f" Reference numbers read again from `{s['reference']}` on {s['reference_refreshed']}."
    return '\n'.join(lines) + '\n'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--images', type=int, default=160, help="bench_corruptions.py's number of images")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--corruptions', type=C.parse_corruptions, default=list(C.CORRUPTIONS),
                   help='subset for a quick check (default: all 15)')
    p.add_argument('--batch-sizes', type=lambda t: [int(b) for b in t.split(',')], default=[64, 256])
    p.add_argument('--pass-batch-size', type=int, default=64)
    p.add_argument('--workers', type=int, default=4)
    add_threads_argument(p, default=None)
    p.add_argument('--skip-fidelity', action='store_true', help='only the robustness pass')
    p.add_argument('--skip-pass', action='store_true', help='only fidelity and throughput')
    p.add_argument('--data', default=IMAGENET_SAMPLE)
    p.add_argument('--reference', default=os.path.join(RESULTS, 'corruptions.json'))
    p.add_argument('--export', default=None, help='copy the chosen images to this folder and stop')
    p.add_argument('--out', required=False, default=None)
    p.add_argument('--refresh-reference', action='store_true',
                   help="copy the reference's numbers from --reference into --out again and rewrite its table "
                        "(after bench_corruptions.py re-timed the reference; no device needed)")
    args = parse_args(p)
    if args.export:
        return export_images(args.data, args.images, args.seed, args.export)
    if args.out is None:
        p.error('--out is required (e.g. benchmarks/results/corruptions_cuda.json)')
    if args.refresh_reference:
        results, reference = read_results(args.out), read_results(args.reference)
        for key, row in results.get('fidelity', {}).get('corruptions', {}).items():
            add_reference(row, 'frost' if key == PROCEDURAL else key, reference)
        when = subprocess.run(['date'], capture_output=True, text=True).stdout.strip()
        results['setup']['reference_refreshed'] = when
        save(results, args.out)
        return print(render_markdown(results))
    device = torch.device(args.device)
    reference = read_results(args.reference)
    if reference['setup']['images'] != args.images or reference['setup']['seed'] != args.seed:
        sys.exit(f"{args.reference} holds {reference['setup']['images']} images (seed {reference['setup']['seed']}); "
                 f"pass the same --images and --seed so both sides see the same images.")
    teacher, data_config = lite0_teacher()
    teacher = teacher.to(device, memory_format=torch.channels_last)
    from importlib.metadata import version
    results = {'setup': {
        'device': str(device), 'images': args.images, 'seed': args.seed, 'batch_sizes': args.batch_sizes,
        'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda'
        else f'{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads',
        'torch': torch.__version__, 'kornia': version('kornia'), 'frost_source': C.frost_source(),
        'reference': os.path.relpath(args.reference, ROOT),
        'date': subprocess.run(['date'], capture_output=True, text=True).stdout.strip(),
        'command': 'python ' + ' '.join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])}}

    student = drop_blocks(teacher, QUICKSTART_DROPPED)  # outside inference mode: finding blocks runs the model
    with torch.inference_mode():
        if not args.skip_fidelity:
            results['fidelity'] = fidelity_and_speed(teacher, data_config, args, device, reference)
            save(results, args.out)
        if not args.skip_pass:
            results['robustness_pass'] = robustness_pass(teacher, student, data_config, args, device)
            save(results, args.out)
    print(render_markdown(results))


if __name__ == '__main__':
    main()
