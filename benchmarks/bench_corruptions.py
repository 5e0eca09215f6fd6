"""Fidelity and speed of practise_df.corruptions against the reference ImageNet-C code (``imagecorruptions``).

Both implementations corrupt the same images: a deterministic subset of ``--data`` (one ImageNet image per class),
resized and centre-cropped to 224 px and stored as uint8 first, the way ImageNet-C was made. The reference gets
one uint8 HxWx3 image at a time (as its users call it), ours the float batch (64 images). The teacher,
tf_efficientnet_lite0 with offline ImageNet weights, classifies both; reported per corruption: top-1 of each
averaged over the severities, the difference, and whether it is within 2 points (faithful). Throughput is
corrupted images per second (corruption only, no model), single-threaded for both, and again with
``--threads`` when that is more than 1.

Resumable: every (corruption, severity) result is written to ``--out`` as soon as it is measured and skipped
when rerun; ``--redo-ours NAMES`` measures our side of those corruptions again (after changing them).
With ``imagecorruptions`` frost photos available, ``frost_procedural`` is our procedural frost against the same
reference numbers.

    OMP_NUM_THREADS=1 python benchmarks/bench_corruptions.py --threads 1
    python benchmarks/bench_corruptions.py --images 0 --grid docs/corruptions_grid.png   # the image grid only
"""
import argparse
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.metadata import version

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from practise_df import corruptions as C
from synth.data import scan_image_folder, subsample

from common import (IMAGENET_SAMPLE, RESULTS, ROOT, add_threads_argument, lite0_teacher, markdown_table, read_results,
                    write_results, write_text)
FAITHFUL_POINTS = 2.0
PROCEDURAL = 'frost_procedural'
RANDOM = {'gaussian_noise', 'shot_noise', 'impulse_noise', 'glass_blur', 'motion_blur', 'snow', 'frost', 'fog',
          'elastic_transform'}


def chosen_samples(folder: str, n: int, seed: int) -> list:
    """The (path, label) pairs of the ``n`` images this benchmark uses (a seeded subset, folder order kept)."""
    samples, _ = scan_image_folder(folder)
    return subsample(samples, n, seed) if n < len(samples) else samples


def load_images(folder: str, n: int, data_config: dict, seed: int):
    """``n`` images (uint8, N x 224 x 224 x 3) resized and centre-cropped as the teacher's eval transform does."""
    from torchvision import transforms
    samples = chosen_samples(folder, n, seed)
    size = data_config['input_size'][-1]
    resize = transforms.Compose([
        transforms.Resize(int(size / data_config['crop_pct']),
                          interpolation=transforms.InterpolationMode(data_config['interpolation'])),
        transforms.CenterCrop(size)])
    images = []
    for path, _ in samples:
        with Image.open(path) as im:
            images.append(np.asarray(resize(im.convert('RGB')), dtype=np.uint8))
    return np.stack(images), torch.tensor([label for _, label in samples])


@torch.inference_mode()
def top1(model, images: torch.Tensor, labels: torch.Tensor, data_config: dict, batch_size: int = 64) -> float:
    """Top-1 (%) of float images in [0, 1] (N, 3, H, W), on the images' device."""
    mean = torch.tensor(data_config['mean'], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(data_config['std'], device=images.device).view(1, 3, 1, 1)
    correct = 0
    for i in range(0, len(images), batch_size):
        batch = ((images[i:i + batch_size].float() - mean) / std).contiguous(memory_format=torch.channels_last)
        logits = model(batch)
        correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    return 100.0 * correct / len(images)


def to_float(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(255)


def set_threads(n: int):
    torch.set_num_threads(n)
    try:
        import cv2  # the reference's blurs and resizes run in OpenCV, which has its own thread pool
        cv2.setNumThreads(n)
    except ImportError:
        pass


@contextmanager
def procedural_frost(enabled: bool):
    saved = C.FROST_DIR
    if enabled:
        C.FROST_DIR = None
    try:
        yield
    finally:
        C.FROST_DIR = saved


def run_reference(images: np.ndarray, name: str, severity: int, seed: int):
    """The reference on each image; returns (N, 3, H, W) float in [0, 1] and the seconds spent corrupting."""
    from imagecorruptions import corrupt as ref_corrupt
    np.random.seed(seed)
    out, seconds = [], 0.0
    for i, image in enumerate(images):
        kwargs = {'seed': seed + i} if name in ('glass_blur', 'impulse_noise') else {}
        start = time.perf_counter()
        out.append(ref_corrupt(image, severity=severity, corruption_name=name, **kwargs))
        seconds += time.perf_counter() - start
    return to_float(np.stack(out)), seconds


def run_ours(images: torch.Tensor, name: str, severity: int, seed: int, batch_size: int):
    gen = torch.Generator().manual_seed(seed)
    out, seconds = [], 0.0
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        start = time.perf_counter()
        out.append(C.corrupt(batch, name, severity, gen))
        seconds += time.perf_counter() - start
    return torch.cat(out), seconds


def warm_up(images: np.ndarray, name: str):
    """First calls outside the clock (numba compiles the reference's glass blur on its first call)."""
    from imagecorruptions import corrupt as ref_corrupt
    ref_corrupt(images[0], severity=1, corruption_name=name)
    C.corrupt(to_float(images[:2]), name, 1, torch.Generator().manual_seed(0))


def summarise(results: dict) -> dict:
    """Per corruption: top-1 of each side averaged over the severities measured, difference, speeds."""
    rows = {}
    for name, per_sev in results['corruptions'].items():
        ref_name = 'frost' if name == PROCEDURAL else name
        ref_sev = results['corruptions'].get(ref_name, {})
        sevs = [s for s in per_sev if 'ours_top1' in per_sev[s] and 'ref_top1' in ref_sev.get(s, {})]
        if not sevs:
            continue
        ref = sum(ref_sev[s]['ref_top1'] for s in sevs) / len(sevs)
        ours = sum(per_sev[s]['ours_top1'] for s in sevs) / len(sevs)
        n = results['setup']['images']
        ref_s = sum(ref_sev[s]['ref_seconds'] for s in sevs)
        ours_s = sum(per_sev[s]['ours_seconds'] for s in sevs)
        row = {'severities': sorted(int(s) for s in sevs), 'ref_top1': ref, 'ours_top1': ours, 'diff': ours - ref,
               'faithful': abs(ours - ref) <= FAITHFUL_POINTS,
               'ref_images_per_s': n * len(sevs) / ref_s, 'ours_images_per_s': n * len(sevs) / ours_s}
        reseeded = [ref_sev[s].get('ref2_top1') for s in sevs]
        if ref_name in RANDOM and all(r is not None for r in reseeded):
            # the reference against itself with other random numbers: the noise floor of the difference
            row['ref_reseeded_diff'] = sum(r - ref_sev[s]['ref_top1'] for r, s in zip(reseeded, sevs)) / len(sevs)
            ours2 = [per_sev[s].get('ours2_top1') for s in sevs]
            if all(o is not None for o in ours2):
                # one draw per side is as noisy as the threshold: compare the means of two draws per side
                row['ref_top1_two_draws'] = (ref + sum(reseeded) / len(sevs)) / 2
                row['ours_top1_two_draws'] = (ours + sum(ours2) / len(sevs)) / 2
                row['diff_two_draws'] = row['ours_top1_two_draws'] - row['ref_top1_two_draws']
                row['faithful'] = abs(row['diff_two_draws']) <= FAITHFUL_POINTS
        threaded = [per_sev[s].get('ours_seconds_threaded') for s in sevs]
        ref_threaded = [ref_sev[s].get('ref_seconds_threaded') for s in sevs]
        if all(t is not None for t in threaded + ref_threaded):
            row['ours_images_per_s_threaded'] = n * len(sevs) / sum(threaded)
            row['ref_images_per_s_threaded'] = n * len(sevs) / sum(ref_threaded)
        rows[name] = row
    return rows


def overall_speed(rows: dict, key: str) -> float:
    """Images per second over all corruptions (total images / total time), each corruption weighted equally."""
    names = [n for n in rows if n != PROCEDURAL and key in rows[n]]
    return len(names) / sum(1 / rows[n][key] for n in names) if names else float('nan')


def render_markdown(results: dict) -> str:
    s, rows = results['setup'], results['summary']
    threaded = s['threads'] > 1
    lines = [
        '# ImageNet-C corruptions: practise_df.corruptions vs the reference `imagecorruptions`',
        '',
        f"Teacher `timm:tf_efficientnet_lite0` (offline ImageNet weights), {s['images']} images of "
        f"`imagenet-sample` (one per class, seed {s['seed']}) resized and centre-cropped to 224 px as uint8, then "
        f"corrupted by both. Severities {', '.join(map(str, s['severities']))}; top-1 (%) averaged over them. "
        f"Faithful: |ours - reference| <= {FAITHFUL_POINTS:g} points. Reference {s['reference']} (one image at a "
        f"time), ours batch {s['batch_size']}. Frost: {s['frost_source']}.",
        '',
        "Reference reseeded: the reference's own top-1 change when run again with other random numbers (the noise "
        "of the comparison for random corruptions, `--noise-floor`). As that noise is as large as the 2-point "
        "threshold, the random corruptions are judged on the means of two draws per side (seeds s and s + 100000, "
        "column 'diff, 2 draws each'), the others on their one (deterministic) result.",
        '',
        f"Clean top-1: **{results['clean_top1']:.1f}%**. Speed: corrupted images/s, corruption only, "
        f"{s['machine']}; single-threaded (torch and OpenCV 1 thread)"
        + (f", and with {s['threads']} threads." if threaded else '.'),
        '',
    ]
    header = ['corruption', 'reference top-1', 'ours top-1', 'diff', 'reference reseeded', 'diff, 2 draws each',
              'faithful', 'reference img/s', 'ours img/s', 'speed-up']
    header += [f"ref img/s ({s['threads']}T)", f"ours img/s ({s['threads']}T)"] if threaded else []
    table = []
    for name, r in rows.items():
        row = [name, f"{r['ref_top1']:.1f}", f"{r['ours_top1']:.1f}", f"{r['diff']:+.1f}",
               format(r['ref_reseeded_diff'], '+.1f') if 'ref_reseeded_diff' in r else '-',
               format(r['diff_two_draws'], '+.1f') if 'diff_two_draws' in r else '-',
               'yes' if r['faithful'] else 'no', f"{r['ref_images_per_s']:.0f}", f"{r['ours_images_per_s']:.0f}",
               f"{r['ours_images_per_s'] / r['ref_images_per_s']:.1f}x"]
        if threaded:
            row += [f"{r.get('ref_images_per_s_threaded', float('nan')):.0f}",
                    f"{r.get('ours_images_per_s_threaded', float('nan')):.0f}"]
        table.append(row)
    lines += markdown_table(header, table, 'lrrrrrcrrr' + 'rr' * threaded)
    core = [n for n in rows if n != PROCEDURAL]
    if core:
        ref_all, ours_all = overall_speed(rows, 'ref_images_per_s'), overall_speed(rows, 'ours_images_per_s')
        mean_ref = sum(rows[n]['ref_top1'] for n in core) / len(core)
        mean_ours = sum(rows[n]['ours_top1'] for n in core) / len(core)
        lines += ['', f"Mean over the {len(core)} corruptions: reference {mean_ref:.1f}%, ours {mean_ours:.1f}%. "
                      f"All corruptions, equal share of images (total images / total time): reference "
                      f"{ref_all:.0f} img/s, ours {ours_all:.0f} img/s ({ours_all / ref_all:.1f}x), 1 thread."]
        if threaded:
            ref_t = overall_speed(rows, 'ref_images_per_s_threaded')
            ours_t = overall_speed(rows, 'ours_images_per_s_threaded')
            lines[-1] += f" With {s['threads']} threads: reference {ref_t:.0f}, ours {ours_t:.0f} img/s."
    lines += ['', '## Per severity (top-1 %, reference / ours)', '']
    table = []
    for name, per_sev in results['corruptions'].items():
        ref_sev = results['corruptions'].get('frost' if name == PROCEDURAL else name, {})
        cells = []
        for v in s['severities']:
            ref, ours = ref_sev.get(str(v), {}).get('ref_top1'), per_sev.get(str(v), {}).get('ours_top1')
            cells.append(f'{ref:.1f} / {ours:.1f}' if ref is not None and ours is not None else '-')
        table.append([name] + cells)
    lines += markdown_table(['corruption'] + [f'severity {v}' for v in s['severities']], table)
    lines += ['', f"Command: `{s['command']}` ({s['date']})."]
    return '\n'.join(lines) + '\n'


def save_grid(image: np.ndarray, path: str, names, severities=(1, 3, 5), tile: int = 96, seed: int = 0):
    """One image under every corruption at ``severities``: ours (left block) and the reference (right block)."""
    from imagecorruptions import corrupt as ref_corrupt
    label_w, head_h, gap = 120, 24, 8
    cols = 2 * len(severities)
    width = label_w + cols * tile + gap
    height = head_h + len(names) * tile
    canvas = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(canvas)
    for j, sev in enumerate(severities):
        for k, who in enumerate(('ours', 'reference')):
            x0 = label_w + k * (len(severities) * tile + gap) + j * tile
            draw.text((x0 + 4, 4), f'{who} s{sev}', fill='black')
    clean = to_float(image[None])
    for i, name in enumerate(names):
        y0 = head_h + i * tile
        draw.text((4, y0 + tile // 2 - 6), name, fill='black')
        for j, sev in enumerate(severities):
            ours = C.corrupt(clean, name, sev, torch.Generator().manual_seed(seed))[0]
            ours = (ours.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            np.random.seed(seed)
            kwargs = {'seed': seed} if name in ('glass_blur', 'impulse_noise') else {}
            ref = ref_corrupt(image, severity=sev, corruption_name=name, **kwargs)
            for k, arr in enumerate((ours, ref)):
                x0 = label_w + k * (len(severities) * tile + gap) + j * tile
                canvas.paste(Image.fromarray(arr).resize((tile, tile), Image.BILINEAR), (x0, y0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, optimize=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', type=int, default=200, help='images to corrupt (0: only --grid)')
    p.add_argument('--severities', default='1-5')
    p.add_argument('--corruptions', default='all')
    add_threads_argument(p, help='torch and OpenCV threads for the model and for a second, threaded speed measurement')
    p.add_argument('--batch-size', type=int, default=64, help='our batch size (the reference is one image at a time)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data', default=IMAGENET_SAMPLE)
    p.add_argument('--out', default=os.path.join(RESULTS, 'corruptions.json'))
    p.add_argument('--redo-ours', default='', help='comma list of corruptions whose our side is measured again')
    p.add_argument('--retime', action='store_true',
                   help='time both implementations again (no model), interleaved, so both speeds share the load')
    p.add_argument('--noise-floor', action='store_true',
                   help='also run the reference and ours again with other seeds on the random corruptions')
    p.add_argument('--grid', default=None, help='save one image under every corruption, ours vs reference (PNG)')
    args = p.parse_args()
    names = C.parse_corruptions(args.corruptions)
    severities = C.parse_severities(args.severities)
    redo_names = [n for n in args.redo_ours.split(',') if n.strip() and n.strip() != PROCEDURAL]
    redo = set(C.parse_corruptions(','.join(redo_names)) if redo_names else [])
    if PROCEDURAL in args.redo_ours:
        redo.add(PROCEDURAL)
    set_threads(args.threads)

    model, data_config = lite0_teacher()
    model = model.to(memory_format=torch.channels_last)  # ~1.5x faster on the CPU
    if args.grid:
        grid_images, _ = load_images(args.data, 1, data_config, args.seed)
        save_grid(grid_images[0], args.grid, names)
        print(f'grid -> {args.grid}', flush=True)
    if args.images <= 0:
        return

    results = read_results(args.out)
    setup = {'images': args.images, 'seed': args.seed, 'data': os.path.relpath(args.data, ROOT),
             'batch_size': args.batch_size}
    old = results.get('setup', {})
    if old and any(old.get(k) != v for k, v in setup.items()):
        sys.exit(f"{args.out} holds results for another setup ({ {k: old.get(k) for k in setup} }); "
                 "pass another --out or delete it.")
    results['setup'] = {
        **setup, 'threads': args.threads, 'torch_threads': torch.get_num_threads(),
        'severities': sorted(set(old.get('severities', [])) | set(severities)),
        'machine': f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"kornia {version('kornia')}",
        'reference': f"imagecorruptions-imaug {version('imagecorruptions-imaug')}",
        'frost_source': C.frost_source(),
        'date': subprocess.run(['date'], capture_output=True, text=True).stdout.strip(),
        'command': 'python ' + ' '.join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
    }
    results.setdefault('corruptions', {})

    def save():
        results['summary'] = summarise(results)
        write_results(args.out, results)
        write_text(os.path.splitext(args.out)[0] + '.md', render_markdown(results))

    images_u8, labels = load_images(args.data, args.images, data_config, args.seed)
    clean = to_float(images_u8)
    if 'clean_top1' not in results:
        results['clean_top1'] = top1(model, clean, labels, data_config)
    print(f"clean top-1 {results['clean_top1']:.1f}% on {len(labels)} images; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    save()

    tasks = [(n, n, False) for n in names]
    if 'frost' in names and C.FROST_DIR is not None:
        tasks.append((PROCEDURAL, 'frost', True))  # our procedural frost against the reference's photos
    for key, name, procedural in tqdm(tasks, desc='corruptions', mininterval=30):
        warmed = False
        for sev in severities:
            entry = results['corruptions'].setdefault(key, {}).setdefault(str(sev), {})
            seed = args.seed * 1000 + C.CORRUPTIONS.index(name) * 10 + sev
            need_ref = key != PROCEDURAL and 'ref_top1' not in entry
            need_ours = 'ours_top1' not in entry or key in redo
            need_ref2 = args.noise_floor and name in RANDOM and key != PROCEDURAL and 'ref2_top1' not in entry
            need_ours2 = args.noise_floor and name in RANDOM and ('ours2_top1' not in entry or need_ours)
            if not (need_ref or need_ours or need_ref2 or need_ours2 or args.retime):
                continue
            if not warmed:
                warm_up(images_u8, name)
                warmed = True
            set_threads(1)
            if need_ref:
                corrupted, seconds = run_reference(images_u8, name, sev, seed)
                entry['ref_seconds'] = seconds
                set_threads(args.threads)
                entry['ref_top1'] = top1(model, corrupted, labels, data_config)
                if args.threads > 1:
                    set_threads(args.threads)
                    entry['ref_seconds_threaded'] = run_reference(images_u8, name, sev, seed)[1]
                set_threads(1)
            if need_ref2:
                entry['ref2_top1'] = top1(model, run_reference(images_u8, name, sev, seed + 100_000)[0], labels,
                                          data_config)
            if need_ours:
                with procedural_frost(procedural):
                    corrupted, seconds = run_ours(clean, name, sev, seed, args.batch_size)
                    entry['ours_seconds'] = seconds
                    set_threads(args.threads)
                    entry['ours_top1'] = top1(model, corrupted, labels, data_config)
                    if args.threads > 1:
                        entry['ours_seconds_threaded'] = run_ours(clean, name, sev, seed, args.batch_size)[1]
            if need_ours2:  # ours with the reference's second seed
                with procedural_frost(procedural):
                    entry['ours2_top1'] = top1(model, run_ours(clean, name, sev, seed + 100_000, args.batch_size)[0],
                                               labels, data_config)
            if args.retime:  # the side not measured above is timed again now (and with --threads)
                for threads, suffix in ((1, ''), (args.threads, '_threaded')) if args.threads > 1 else ((1, ''),):
                    set_threads(threads)
                    if key != PROCEDURAL and not need_ref:
                        entry['ref_seconds' + suffix] = run_reference(images_u8, name, sev, seed)[1]
                    if not need_ours:
                        with procedural_frost(procedural):
                            entry['ours_seconds' + suffix] = run_ours(clean, name, sev, seed, args.batch_size)[1]
            set_threads(args.threads)
            ref_top1 = results['corruptions'].get(name, {}).get(str(sev), {}).get('ref_top1', float('nan'))
            print(f"{key:18s} severity {sev}: reference {ref_top1:5.1f}%  ours {entry['ours_top1']:5.1f}%  "
                  f"({args.images / results['corruptions'][name][str(sev)]['ref_seconds']:.0f} vs "
                  f"{args.images / entry['ours_seconds']:.0f} img/s)", flush=True)
            save()
    save()
    print(render_markdown(results))


if __name__ == '__main__':
    main()
