"""Interrupted runs, untouched inputs, determinism and failing ranks (issue 7).

The interrupted run is killed with SIGKILL (no clean-up handlers run) at a random point inside
synthesis, then inside scoring, then inside finetuning, and resumed each time; its artefacts must
match an uninterrupted run with the same seed, which also shows the pipeline is deterministic on CPU.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, accelerate_launch, launch_log, make_image_folder, randomize_norms
from practise_df import create_model, find_blocks, load_compressed
from practise_df.pipeline import compress
from practise_df.config import (CompressConfig, EvalConfig, FinetuneConfig, ImagesConfig, LatencyConfig, ScoringConfig,
                                SynthesisConfig)
from practise_df.finetune import COMPLETE_MARKER

SIZE = 32


@pytest.fixture(scope='module')
def teacher_files(tmp_path_factory):
    """A resnet18 teacher with non-trivial random weights in a local file, and a fixed per-block latency
    table (measured latency is noisy; fixing it makes the block choice a function of the seed alone)."""
    root = tmp_path_factory.mktemp('teacher')
    torch.manual_seed(0)
    model = randomize_norms(create_model('timm:resnet18'))
    weights = str(root / 'resnet18.safetensors')
    save_file(model.state_dict(), weights)
    blocks = find_blocks(model, (3, SIZE, SIZE))
    table = {b: {'saved_ms': 1.0 + i, 'saved_pct': 2.0 + i} for i, b in enumerate(blocks)}
    latency = str(root / 'block_latency.json')
    with open(latency, 'w') as f:
        json.dump({'blocks': table}, f)
    return weights, latency


def _args(out, weights, latency):
    return ['compress', '--model', 'timm:resnet18', '--weights', weights, '--block-latency', latency,
            '--num-images', '24', '--heldout-images', '8', '--synth-batch-size', '4', '--synth-steps', '20',
            '--input-size', str(SIZE), '--score-images', '16', '--adaptor-steps', '10', '--drop', '2',
            '--finetune-steps', '12', '--finetune-batch-size', '4', '--checkpointing-steps', '2',
            '--latency-batch-size', '2', '--latency-repeats', '2', '--output-dir', str(out)]


def _cli(args):
    return [sys.executable, '-m', 'practise_df.cli', *args]


ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)


def _count(out, stage):
    if stage == 'synth':
        d = os.path.join(out, 'synth')
        return sum(f.endswith('.png') for _, _, fs in os.walk(d) for f in fs) if os.path.isdir(d) else 0
    if stage == 'scoring':
        journal = os.path.join(out, 'scores.partial.jsonl')
        return sum(1 for _ in open(journal)) if os.path.isfile(journal) else 0
    # Old checkpoints are pruned: count by the newest complete one (a kill before the first is
    # complete rightly leaves nothing to resume from).
    d = os.path.join(out, 'checkpoints')
    numbers = [int(n.rsplit('_', 1)[-1]) for n in (os.listdir(d) if os.path.isdir(d) else [])
               if os.path.exists(os.path.join(d, n, COMPLETE_MARKER))]
    return max(numbers) + 1 if numbers else 0


def _run_and_kill(args, out, stage, at_least, rng):
    """Start the CLI, SIGKILL it once ``stage`` has produced ``at_least`` items plus a random delay."""
    proc = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    deadline = time.time() + 600
    while _count(out, stage) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f'the run ended before {stage} reached {at_least} items:\n'
                                 f'{proc.stderr.read().decode()[-3000:]}')
        assert time.time() < deadline, f'{stage} never reached {at_least} items'
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))  # land anywhere, also inside a write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be interrupted'


def _synth_files(out):
    d = os.path.join(out, 'synth')
    files = {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), 'rb').read()
             for r, _, fs in os.walk(d) for f in fs if f.endswith('.png')}
    records = sorted(open(os.path.join(d, 'metadata.jsonl')).read().splitlines())
    return files, records


def _sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, teacher_files):
    weights, latency = teacher_files
    inputs = {p: _sha256(p) for p in teacher_files}
    reference = tmp_path / 'reference'
    proc = subprocess.run(_cli(_args(reference, weights, latency)), capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    seed = int(os.environ.get('PRACTISE_DF_TEST_SEED', time.time_ns() % 10**6))
    rng = random.Random(seed)
    print(f'kill points drawn with seed {seed} (PRACTISE_DF_TEST_SEED={seed} repeats them)')
    out = tmp_path / 'interrupted'
    _run_and_kill(_args(out, weights, latency), out, 'synth', 4 * rng.randint(1, 3), rng)
    resume = _args(out, weights, latency) + ['--resume']
    _run_and_kill(resume, out, 'scoring', rng.randint(1, 3), rng)  # of 5 blocks
    _run_and_kill(resume, out, 'finetune', rng.randint(1, 4), rng)
    proc = subprocess.run(_cli(resume + ['--json']), capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resumed from' in proc.stderr, 'finetuning did not continue from its last checkpoint'

    assert _synth_files(out) == _synth_files(reference), 'same images, byte for byte'
    got, want = (json.load(open(d / 'scores.json')) for d in (out, reference))
    assert got['selected'] == want['selected']
    assert [(s['block'], s['recoverability']) for s in got['scores']] == \
        [(s['block'], pytest.approx(s['recoverability'], rel=1e-6)) for s in want['scores']]
    a, b = (load_compressed(str(d / 'model')).state_dict() for d in (out, reference))
    for k, v in b.items():
        assert torch.allclose(a[k].float(), v.float(), rtol=1e-5, atol=1e-7), k
    assert json.loads(proc.stdout)['dropped_blocks'] == want['selected']
    assert {p: _sha256(p) for p in teacher_files} == inputs, 'the teacher weights file was modified'
    leftovers = [os.path.join(r, f) for r, ds, fs in os.walk(out) for f in ds + fs if f.endswith(('.tmp', '.old'))]
    assert not leftovers, f'temporary files left behind: {leftovers}'


def _tree_digest(root):
    return {os.path.relpath(os.path.join(r, f), root): (_sha256(os.path.join(r, f)),
                                                        os.stat(os.path.join(r, f)).st_mtime_ns)
            for r, _, fs in os.walk(root) for f in fs}


def test_inputs_are_never_modified(tmp_path, teacher_files):
    weights, _ = teacher_files
    images = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b', 'c'), per_class=4, size=40)
    with open(os.path.join(images, 'a', 'broken.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n truncated')  # skipped and counted, never "repaired"
    before, weights_sum = _tree_digest(images), _sha256(weights)
    config = CompressConfig(model='timm:resnet18', weights=weights, output_dir=str(tmp_path / 'run'),
                            input_size=SIZE, images=ImagesConfig(source=images, num_images=12, heldout=4),
                            scoring=ScoringConfig(drop=1, num_images=8), latency=LatencyConfig(batch_size=2, repeats=2),
                            eval=EvalConfig(data=images), finetune=FinetuneConfig(steps=2, batch_size=4))
    report = compress(config, progress=False)
    assert report['eval']['teacher']['images'] == 12 and report['eval']['skipped_files'] == 1
    assert _tree_digest(images) == before and _sha256(weights) == weights_sum


def test_same_seed_same_block_choice_in_process(tmp_path, teacher_files):
    """Determinism without subprocesses: scoring twice in one process gives identical scores."""
    weights, latency = teacher_files
    runs = []
    for name in ('one', 'two'):
        config = CompressConfig(model='timm:resnet18', weights=weights, output_dir=str(tmp_path / name),
                                input_size=SIZE, images=ImagesConfig(num_images=8, heldout=4),
                                synthesis=SynthesisConfig(batch_size=4, steps=5),
                                scoring=ScoringConfig(drop=2, num_images=4, adaptor_steps=10),
                                latency=LatencyConfig(block_latency=latency),
                                finetune=FinetuneConfig(steps=0))
        compress(config, progress=False)
        runs.append(json.load(open(tmp_path / name / 'scores.json')))
    for run in runs:
        for s in run['scores']:
            s.pop('seconds')
    assert runs[0] == runs[1]


def test_block_latency_file_errors(tmp_path, teacher_files):
    weights, _ = teacher_files
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'blocks': {'layer1.1': {'saved_ms': 1.0, 'saved_pct': 1.0}}}))
    config = CompressConfig(model='timm:resnet18', weights=weights, output_dir=str(tmp_path / 'run'),
                            input_size=SIZE, images=ImagesConfig(num_images=4, heldout=2),
                            synthesis=SynthesisConfig(batch_size=4, steps=2), scoring=ScoringConfig(drop=1),
                            latency=LatencyConfig(block_latency=str(bad)), finetune=FinetuneConfig(steps=0))
    with pytest.raises(ValueError, match=r'has no latency for block\(s\) layer1\.0, layer2\.1.*--per-block'):
        compress(config, progress=False)
    assert not (tmp_path / 'run').exists(), 'checked before anything is written'
    bad.write_text('[1, 2]')
    with pytest.raises(ValueError, match='is not a per-block latency file'):
        compress(config, progress=False)


def _launch_compress(tmp_path, teacher_files, extra=()):
    weights, latency = teacher_files
    audit = tmp_path / 'audit'
    audit.mkdir()
    out = tmp_path / 'run'
    args = [audit, *extra, '--', *_args(out, weights, latency)[1:]]
    return accelerate_launch('tests/scripts/compress_ranks.py', args, timeout=600), audit, out


def test_two_ranks_never_write_the_same_file(tmp_path, teacher_files):
    proc, audit, out = _launch_compress(tmp_path, teacher_files)
    assert proc.returncode == 0, launch_log(proc)
    root = os.path.realpath(out) + os.sep  # the run's files (not /dev/null or system temp files)
    writes = [{p for p in open(audit / f'rank{r}.txt').read().split() if p.startswith(root)} for r in (0, 1)]
    assert writes[0] and writes[1], 'both ranks wrote something (their synthesis shards at least)'
    assert not writes[0] & writes[1], f'both ranks wrote {sorted(writes[0] & writes[1])}'
    assert any('metadata-rank1' in p for p in writes[1])
    assert os.path.isfile(out / 'report.json')


def test_a_crashing_rank_stops_the_job_with_its_error(tmp_path, teacher_files):
    """The launcher stops rank 0 when rank 1 crashes; rank 0 left waiting for it would keep the launch running
    until accelerate_launch's timeout, which fails the test."""
    proc, _, out = _launch_compress(tmp_path, teacher_files, ['--crash-rank', '1'])
    assert proc.returncode != 0
    assert 'injected failure on rank 1' in proc.stderr, launch_log(proc)
    assert not os.path.exists(out / 'report.json')


def test_a_run_json_reproduces_the_run(tmp_path, teacher_files):
    """`compress --config RUN/run.json --output-dir NEW` makes the same run again: the same blocks and, on the
    CPU, the same weights (block latency pinned with --block-latency, as live latency can change the choice)."""
    from practise_df.cli import main
    weights, latency = teacher_files
    first, second = tmp_path / 'first', tmp_path / 'second'
    assert main(_args(first, weights, latency) + ['--finetune-steps', '3', '--json']) == 0
    assert main(['compress', '--config', str(first / 'run.json'), '--output-dir', str(second), '--json']) == 0
    a, b = (json.load(open(d / 'run.json')) for d in (first, second))
    assert {**a, 'output_dir': None} == {**b, 'output_dir': None}
    assert json.load(open(first / 'scores.json'))['selected'] == json.load(open(second / 'scores.json'))['selected']
    x, y = (load_compressed(str(d / 'model')).state_dict() for d in (first, second))
    assert all(torch.equal(v, y[k]) for k, v in x.items())
