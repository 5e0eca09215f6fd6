"""Does the latency saving drift on this machine, in time, between sessions or between model copies, and which
interval covers it?

    python benchmarks/bench_latency_drift.py record [--minutes 20] [--out runs/latency_drift.jsonl]
    python benchmarks/bench_latency_drift.py analyse [--out runs/latency_drift.jsonl] [--results benchmarks/results]

``record`` times the quickstart's teacher (tf_efficientnet_lite0) and student (blocks.1.1 and blocks.4.2
dropped) interleaved (batch 8, each once per round in a seeded random order), for ``--minutes``, and appends
every round (its start time, both timings, the session and the threads) to a JSON lines file, flushed each
round: a killed run resumes where it stopped and records until the total is reached. With ``--fresh-every S``
a new session starts every S seconds: a new input tensor and warm-up, and with ``--fresh models`` new deep
copies of both models (what :func:`practise_df.latency.compare_latency` now does every few rounds);
``--threads 1,2`` gives the sessions those thread counts in turn.

``analyse`` cuts the recording into disjoint windows of a few lengths, each a stand-in for one separate
measurement, computes each window's saving and interval with every interval rule below, and reports, per rule
and window length: the share of windows whose interval contains the whole recording's median saving
(coverage), the share of pairs of windows whose intervals overlap, and the median width. With sessions, it
reports the same per session (their spread is what a new measurement would see), and per thread count.

- ``pairs``: the distribution-free interval of the median log ratio, rounds taken as independent (the rule
  before issue 33's fix).
- ``batchesK``: :func:`practise_df.latency.paired_saving` with ``batches=K`` (the rounds in K consecutive
  batches, the interval from the spread of the batch medians; the library's default is
  :data:`practise_df.latency.BATCHES`).
Results: ``--results``/NAME.json and NAME.md, NAME the recording's file name.
"""
import argparse
import copy
import datetime
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import time

import psutil
import torch
from common import ROOT, lite0_teacher

from practise_df import drop_blocks
from practise_df.latency import median_interval, paired_saving
from practise_io import write_json_atomic, write_text_atomic

STUDENT_BLOCKS = ['blocks.1.1', 'blocks.4.2']  # the quickstart's choice
WINDOWS = (15, 30, 60, 120, 240)  # seconds: the lengths of the simulated measurements


def record(args):
    done = _read(args.out)
    if done and done[-1]['t'] >= args.minutes * 60:
        print(f"{args.out} already holds {done[-1]['t'] / 60:.1f} minutes")
        return
    teacher, cfg = lite0_teacher()
    built = [teacher, drop_blocks(teacher, STUDENT_BLOCKS)]
    threads = [int(t) for t in str(args.threads).split(',')]
    rng = random.Random(len(done))
    order = [0, 1]
    offset = done[-1]['t'] + 1.0 if done else 0.0  # times continue across a resume
    segment = done[-1].get('segment', 0) + 1 if done else 0
    with torch.inference_mode(), open(args.out, 'a') as f:
        start, fresh_at = time.time(), -math.inf
        while (t := offset + time.time() - start) < args.minutes * 60:
            if t - fresh_at >= args.fresh_every:  # a new input tensor (and copies of the models): a new session
                fresh_at, segment = t, segment + 1
                torch.set_num_threads(threads[segment % len(threads)])  # a list of counts: one per session in turn
                models = [copy.deepcopy(m) for m in built] if args.fresh == 'models' else built
                x = torch.randn(args.batch_size, *cfg['input_size'])
                for m in models:
                    for _ in range(3):
                        m(x)
                continue
            rng.shuffle(order)
            ms = [0.0, 0.0]
            for i in order:
                t0 = time.perf_counter()
                models[i](x)
                ms[i] = (time.perf_counter() - t0) * 1000
            f.write(json.dumps({'t': round(t, 3), 'teacher_ms': round(ms[0], 3), 'student_ms': round(ms[1], 3),
                                'loadavg': psutil.getloadavg()[0], 'segment': segment,
                                'threads': torch.get_num_threads()}) + '\n')
            f.flush()
    print(f'recorded {len(_read(args.out))} rounds into {args.out}')


def _read(path):
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a killed run
                break
    return rows


def pairs_rule(teacher, student):
    """The rule before: the sign-test interval of the median log ratio over independent rounds."""
    logs = [math.log(s / t) for t, s in zip(teacher, student)]
    median, low, high = median_interval(logs)
    pct = lambda v: 100 * (1 - math.exp(v))  # noqa: E731
    return pct(median), None if high is None else pct(high), None if low is None else pct(low)


def batches_rule(batches):
    def rule(teacher, student):
        s = paired_saving(teacher, student, batches=batches)
        return s.pct, s.low, s.high
    return rule


RULES = {'pairs': pairs_rule, **{f'batches{k}': batches_rule(k) for k in (5, 10, 20)}}


def analyse(args):
    rows = _read(args.out)
    if not rows:
        raise SystemExit(f'{args.out} is empty: run `record` first')
    t0 = rows[0]['t']
    truth = 100 * (1 - math.exp(statistics.median(math.log(r['student_ms'] / r['teacher_ms']) for r in rows)))
    minutes = (rows[-1]['t'] - t0) / 60
    result = {'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
              'machine': f'{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}',
              'recording': {'rounds': len(rows), 'minutes': round(minutes, 1), 'median_saving': truth,
                            'loadavg_max': max(r['loadavg'] for r in rows)},
              'minute_savings': [], 'rules': {}}
    for m in range(int(minutes) + 1):  # the drift, minute by minute
        part = [r for r in rows if m * 60 <= r['t'] - t0 < (m + 1) * 60]
        if len(part) >= 6:
            result['minute_savings'].append(round(pairs_rule([r['teacher_ms'] for r in part],
                                                             [r['student_ms'] for r in part])[0], 2))
    counts = sorted({r.get('threads') for r in rows if r.get('threads')})
    if len(counts) > 1:  # sessions alternating thread counts: does the drift depend on them?
        for n in counts:
            per = result.setdefault('sessions_by_threads', {})[n] = []
            for seg in sorted({r['segment'] for r in rows if r.get('threads') == n}):
                part = [r for r in rows if r['segment'] == seg]
                if len(part) >= 6:
                    per.append({'minute': round((part[0]['t'] - t0) / 60, 1),
                                'saving': round(pairs_rule([r['teacher_ms'] for r in part],
                                                           [r['student_ms'] for r in part])[0], 2),
                                'teacher_ms': round(statistics.median(r['teacher_ms'] for r in part), 1)})
    for name, rule in RULES.items():
        for w in WINDOWS:
            windows = [[r for r in rows if k * w <= r['t'] - t0 < (k + 1) * w] for k in range(int(minutes * 60 // w))]
            found = [rule([r['teacher_ms'] for r in part], [r['student_ms'] for r in part]) for part in windows
                     if len(part) >= 6]
            found = [f for f in found if f[1] is not None]
            if len(found) < 2:
                continue
            overlap = [max(a[1], b[1]) <= min(a[2], b[2]) for a, b in itertools.combinations(found, 2)]
            result['rules'].setdefault(name, {})[w] = {
                'windows': len(found), 'coverage': statistics.mean(lo <= truth <= hi for _, lo, hi in found),
                'pairs_overlapping': statistics.mean(overlap), 'all_overlap': all(overlap),
                'median_width': statistics.median(hi - lo for _, lo, hi in found),
                'savings': [round(p, 2) for p, _, _ in found]}
    segments = sorted({r.get('segment', 0) for r in rows})
    if len(segments) > 1:  # sessions: each with its own input tensor (and model copies) and warm-up
        for name, rule in RULES.items():
            found = []
            for seg in segments:
                part = [r for r in rows if r.get('segment', 0) == seg]
                if len(part) >= 6:
                    found.append(rule([r['teacher_ms'] for r in part], [r['student_ms'] for r in part]))
            overlap = [max(a[1], b[1]) <= min(a[2], b[2]) for a, b in itertools.combinations(found, 2)]
            result.setdefault('sessions', {})[name] = {
                'sessions': len(found), 'savings': [round(p, 2) for p, _, _ in found],
                'sd_between': statistics.stdev(p for p, _, _ in found),
                'pairs_overlapping': statistics.mean(overlap), 'all_overlap': all(overlap),
                'median_width': statistics.median(hi - lo for _, lo, hi in found)}
    name = os.path.splitext(os.path.basename(args.out))[0]
    os.makedirs(args.results, exist_ok=True)
    write_json_atomic(os.path.join(args.results, name + '.json'), result)
    write_text_atomic(os.path.join(args.results, name + '.md'), markdown(result))
    print(markdown(result))


def markdown(result) -> str:
    rec = result['recording']
    lines = [f"# Latency drift ({result['date']}, {result['machine']})", '',
             f"{rec['rounds']} interleaved rounds over {rec['minutes']} minutes; median saving of the whole "
             f"recording {rec['median_saving']:.2f}%; highest 1-min load average {rec['loadavg_max']:.2f}.", '',
             'Saving minute by minute: ' + ', '.join(f'{s:.1f}' for s in result['minute_savings']), '',
             '| rule | window s | windows | covers the whole median | pairs of windows overlapping | all overlap | '
             'median width (points) |', '|---|---|---|---|---|---|---|']
    for name, per in result['rules'].items():
        for w, r in per.items():
            lines.append(f"| {name} | {w} | {r['windows']} | {100 * r['coverage']:.0f}% | "
                         f"{100 * r['pairs_overlapping']:.0f}% | {r['all_overlap']} | {r['median_width']:.1f} |")
    for n, per in result.get('sessions_by_threads', {}).items():
        lines += ['', f'{n} thread(s), session by session (minute: saving %, teacher ms): ' +
                  ', '.join(f"{p['minute']}: {p['saving']:.1f}, {p['teacher_ms']:.0f}" for p in per)]
    if result.get('sessions'):
        lines += ['', 'Sessions (a new input tensor, or new copies of the models, and warm-up again):', '',
                  '| rule | sessions | savings | SD between sessions | pairs overlapping | all overlap | '
                  'median width |', '|---|---|---|---|---|---|---|']
        for name, r in result['sessions'].items():
            lines.append(f"| {name} | {r['sessions']} | {', '.join(f'{v:.1f}' for v in r['savings'])} | "
                         f"{r['sd_between']:.2f} | {100 * r['pairs_overlapping']:.0f}% | {r['all_overlap']} | "
                         f"{r['median_width']:.1f} |")
    return '\n'.join(lines) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('mode', choices=('record', 'analyse'))
    parser.add_argument('--minutes', type=float, default=20.0)
    parser.add_argument('--batch-size', type=int, default=8, help="the quickstart's latency batch")
    parser.add_argument('--fresh-every', type=float, default=math.inf,
                        help='record: seconds between new sessions (a new input tensor, warm-up again)')
    parser.add_argument('--fresh', choices=('input', 'models'), default='input',
                        help='record: what a new session renews besides the input: models = deep copies too')
    parser.add_argument('--threads', default=str(torch.get_num_threads()),
                        help='record: threads, or a comma list used by the sessions in turn (with --fresh-every)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'latency_drift.jsonl'))
    parser.add_argument('--results', default=os.path.join(ROOT, 'benchmarks', 'results'))
    args = parser.parse_args()
    (record if args.mode == 'record' else analyse)(args)


if __name__ == '__main__':
    sys.exit(main())
