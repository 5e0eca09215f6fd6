"""Is a CPU forward/backward pass repeatable bit for bit, with and without Intel MKL's conditional numerical
reproducibility (``MKL_CBWR=AUTO``), and what does that mode cost?

Each case runs in a fresh process (MKL reads ``MKL_CBWR`` at its first call): a model with frozen weights, the
same input ``--repeats`` times, the gradient with respect to the input compared with the first one (as image
synthesis uses it). Reports how many repeats differed and the median time per pass. Three modes: unset, set in
the environment the process starts with, and unset at start but left to ``run_command`` (which sets it after
torch, timm and the CLI are imported, as ``practise-df`` and the recipes do).

    python benchmarks/bench_cpu_determinism.py --output benchmarks/results/cpu_determinism.json
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from common import write_results

# (model, input size, batch): the unit tests' tiny model, whose last stage is a 1x1 map at 32 px (a 3x3
# convolution there runs as MKL's SGEMM), and two ImageNet models at their own size.
CASES = (('test_resnet', 32, 1), ('test_resnet', 32, 2), ('tf_efficientnet_lite0', 224, 1),
         ('tf_efficientnet_lite0', 224, 8), ('resnet18', 224, 1), ('resnet18', 224, 8))


def run_case(model_name: str, size: int, batch: int, repeats: int) -> dict:
    import timm
    import torch
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10 if model_name.startswith('test_') else 1000).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x0 = torch.randn(batch, 3, size, size)
    grads, times = [], []
    for _ in range(repeats):
        x = x0.clone().requires_grad_(True)
        start = time.perf_counter()
        model(x).square().sum().backward()
        times.append(time.perf_counter() - start)
        grads.append(x.grad)
    return {'differ': sum(not torch.equal(grads[0], g) for g in grads[1:]), 'ms': 1000 * statistics.median(times),
            'threads': torch.get_num_threads()}


def run_case_as_command(model_name: str, size: int, batch: int, repeats: int) -> dict:
    from practise_df.cli._run import run_command
    result = {}
    run_command('bench', lambda _: result.update(run_case(model_name, size, batch, repeats)), str, None)
    return result


MODES = {'unset': None, 'AUTO': 'AUTO', 'AUTO (run_command)': None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--repeats', type=int, default=40)
    p.add_argument('--output', help='JSON file for the results')
    p.add_argument('--case', nargs=5, metavar=('MODEL', 'SIZE', 'BATCH', 'REPEATS', 'MODE'), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:  # the child process
        name, size, batch, repeats, mode = args.case
        run = run_case_as_command if mode == 'AUTO (run_command)' else run_case
        print(json.dumps(run(name, int(size), int(batch), int(repeats))))
        return
    rows = []
    for name, size, batch in CASES:
        for mode, cbwr in MODES.items():
            env = {k: v for k, v in os.environ.items() if k != 'MKL_CBWR'}
            if cbwr:
                env['MKL_CBWR'] = cbwr
            out = subprocess.run([sys.executable, __file__, '--case', name, str(size), str(batch), str(args.repeats),
                                  mode], env=env, capture_output=True, text=True, check=True).stdout
            row = {'model': name, 'size': size, 'batch': batch, 'MKL_CBWR': mode,
                   **json.loads(out.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{name:22s} {size:4d} px  batch {batch}  MKL_CBWR={row['MKL_CBWR']:18s}  "
                  f"{row['differ']:3d}/{args.repeats - 1} repeats differ  {row['ms']:7.1f} ms", flush=True)
    if args.output:
        write_results(args.output, {'machine': platform.processor() or platform.machine(), 'cpu': _cpu_name(),
                                    'repeats': args.repeats, 'rows': rows}, indent=1)


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == '__main__':
    main()
