"""The same seed gives the same block scores in every run and on any number of processes, and every long
stage spread over the processes (scoring, the guard, evaluation, robustness) gives the numbers of one; two ranks
never write the same file, and a failing rank ends the job (practise_df._distributed under accelerate launch)."""
import contextlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from conftest import MODEL, TINY, accelerate_launch, compress_args, launch_log, make_image_folder, randomize_norms
from practise_df import create_model, load_compressed
from practise_df.blocks import find_blocks
from practise_df.cli import main
from practise_df.guard import closeness
from practise_df.models import resolve_data_config
from practise_df.pipeline import PARTIAL_SCORES_FILE
from practise_df.recovery import student_at
from synth.ood import photo_crops

SIZE = 32
SCRIPT = 'tests/scripts/cli_ranks.py'
CORRUPTIONS, SEVERITIES = 'gaussian_noise,contrast', '1,3'


@contextlib.contextmanager
def one_thread():
    """As each rank of the launches runs (torchrun sets OMP_NUM_THREADS=1), so numbers compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """13 labelled and unlabelled images (batches of 4 over 2 processes: 4, 4 | 4, 1), a resnet18 teacher with
    non-trivial random weights, and a fixed per-block latency table."""
    root = tmp_path_factory.mktemp('distributed')
    images = make_image_folder(str(root / 'images'), classes=('0', '1', '2'), per_class=4, flat=1,  # class indices
                               size=40)
    torch.manual_seed(0)
    model = randomize_norms(create_model('timm:resnet18'))
    weights = str(root / 'resnet18.safetensors')
    save_file(model.state_dict(), weights)
    table = {b: {'saved_ms': 1.0, 'saved_pct': 2.0 + i % 3} for i, b in enumerate(find_blocks(model, (3, SIZE, SIZE)))}
    latency = str(root / 'block_latency.json')
    with open(latency, 'w') as f:
        json.dump({'blocks': table}, f)
    return {'images': images, 'weights': weights, 'latency': latency}


def _compress(files, out, *extra):
    return ['compress', '--model', 'timm:resnet18', '--weights', files['weights'], '--images', files['images'],
            '--num-images', '13', '--heldout-images', '4', '--input-size', str(SIZE), '--score-images', '9',
            '--adaptor-steps', '5', '--drop', '2', '--block-latency', files['latency'], '--latency-batch-size', '1',
            '--latency-repeats', '1', '--output-dir', str(out), '--json', *extra]


def _evaluations(files, model, out):
    teacher = ['--teacher', 'timm:resnet18', '--teacher-weights', files['weights']]
    common = ['--model', str(model), '--data', files['images'], *teacher, '--batch-size', '4', '--json']
    return (['eval', *common, '--repeats', '1', '--output', str(out / 'eval.json')],
            ['robustness', *common, '--corruptions', CORRUPTIONS, '--severities', SEVERITIES,
             '--output', str(out / 'robustness.json')])


def _launch(commands, *own):
    args = list(own)
    for command in commands:
        args += ['::', *command]
    return accelerate_launch(SCRIPT, args, timeout=600)


def _scores(out):
    return json.load(open(out / 'scores.json'))


def _assert_same_scores(a, b):
    assert a['selected'] == b['selected']
    assert [s['block'] for s in a['scores']] == [s['block'] for s in b['scores']]
    for x, y in zip(a['scores'], b['scores']):
        for key in ('recoverability', 'mse_dropped', 'score'):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-9), (x['block'], key)


def test_the_same_compress_twice_gives_identical_scores(tmp_path, image_folder):
    """A random-weight teacher and real images, as a new user tries it: the seed fixes the weights too."""
    latency = str(tmp_path / 'block_latency.json')  # pinned: measured latency is noise, not the seed's to fix
    assert main(['latency', '--model', 'timm:test_convnext', '--input-size', '64', '--per-block', '--repeats', '1',
                 '--output', latency]) == 0
    runs = []
    for name in ('first', 'second'):
        assert main(['compress', '--model', 'timm:test_convnext', '--images', image_folder, '--num-images', '12',
                     '--input-size', '64', '--score-images', '8', '--adaptor-steps', '3', '--drop', '2',
                     '--block-latency', latency, '--finetune-steps', '0', '--output-dir', str(tmp_path / name),
                     '--json']) == 0
        runs.append(_scores(tmp_path / name))
    for s in runs[0]['scores'] + runs[1]['scores']:
        s.pop('seconds')
    assert runs[0] == runs[1]


def test_two_processes_score_evaluate_and_guard_as_one(tmp_path, files):
    two, one = tmp_path / 'two', tmp_path / 'one'
    two.mkdir()
    one.mkdir()
    compress_two = _compress(files, two / 'run', '--finetune-steps', '2', '--finetune-batch-size', '4',
                             '--eval-data', files['images'], '--eval-batch-size', '4', '--recovery-images', 'photos',
                             '--robustness',
                             '--robustness-corruptions', CORRUPTIONS, '--robustness-severities', SEVERITIES)
    proc = _launch([compress_two, *_evaluations(files, two / 'run' / 'model', two)])
    assert proc.returncode == 0, launch_log(proc)
    assert (two / 'run' / 'scores.partial-rank1.jsonl').exists(), 'rank 1 scored blocks, in its own journal'

    with one_thread():
        assert main(_compress(files, one / 'run', '--finetune-steps', '0')) == 0
        _assert_same_scores(_scores(two / 'run'), _scores(one / 'run'))
        # the same model evaluated by one process: eval and robustness give the same numbers
        for command in _evaluations(files, two / 'run' / 'model', one):
            assert main(command) == 0
        for name in ('eval.json', 'robustness.json'):
            a, b = json.load(open(two / name)), json.load(open(one / name))
            for key in ('latency_ms', 'teacher_latency_ms', 'output'):  # timings differ run to run
                a.pop(key, None), b.pop(key, None)
            assert a == b, name
        assert json.load(open(one / 'eval.json'))['images'] == 13

        # compress's own final evaluation and recovery choice, against one process on the models it wrote
        report = json.load(open(two / 'run' / 'report.json'))
        student = load_compressed(str(two / 'run' / 'model'))
        dropped = load_compressed(str(two / 'run' / 'dropped'))
        teacher = create_model('timm:resnet18', files['weights'])
        eval_student = json.load(open(two / 'eval.json'))
        assert report['eval']['student']['images'] == 13
        assert {k: report['eval']['student'][k] for k in ('top1', 'top5', 'agreement')} == \
            {k: eval_student[k] for k in ('top1', 'top5', 'agreement')}
        robust = json.load(open(two / 'robustness.json'))
        assert report['robustness']['corruptions'] == robust['corruptions']
        assert report['robustness']['summary'] == robust['summary']
        images = photo_crops(resolve_data_config(teacher, input_size=SIZE), seed=0)
        choice = report['recovery']
        whole = student if choice['kept'] == 'mix1' else load_compressed(str(two / 'run' / 'rejected'))
        for candidate in choice['candidates']:
            model = student_at(dropped, whole, candidate['mix'])
            means = {k: v.mean().item() for k, v in closeness(model, teacher, images).items()}
            assert means == pytest.approx(candidate['closeness'], rel=1e-5), candidate['name']


def test_a_killed_two_process_scoring_resumes_without_scoring_a_block_twice(tmp_path, files):
    out, reference = tmp_path / 'run', tmp_path / 'reference'
    args = _compress(files, out, '--finetune-steps', '0', '--no-guard')
    proc = _launch([args], '--kill-rank', '1', '--kill-after', '1')
    assert proc.returncode != 0, launch_log(proc)
    journals = [out / PARTIAL_SCORES_FILE, out / 'scores.partial-rank1.jsonl']
    before = [json.loads(line)['block'] for j in journals if j.exists() for line in open(j)]
    assert before and not (out / 'scores.json').exists(), launch_log(proc)

    with one_thread():  # resumed on one process: the blocks either rank finished are not scored again
        assert main(args + ['--resume']) == 0
        assert main(_compress(files, reference, '--finetune-steps', '0', '--no-guard')) == 0
    after = [json.loads(line)['block'] for j in journals if j.exists() for line in open(j)]
    assert len(after) == len(set(after)), f'a block was scored twice: {after}'
    assert set(after) == {s['block'] for s in _scores(out)['scores']}
    _assert_same_scores(_scores(out), _scores(reference))


def test_eval_alone_joins_the_processes_in_one_group_on_a_cpu_only_machine(tmp_path, files):
    """`practise-df eval` as the first and only command of a 2-process launch: with no GPU, Accelerate forms the
    gloo group only when asked for the CPU, else each process runs alone as its own main process, evaluates
    every image and prints its own result."""
    teacher_as_model = ['--model', 'timm:resnet18', '--weights', files['weights']]
    proc = _launch([['eval', *teacher_as_model, '--data', files['images'], '--batch-size', '4', '--repeats', '1',
                     '--json']])
    assert proc.returncode == 0, launch_log(proc)
    assert proc.stdout.count('"latency_ms"') == 1, proc.stdout  # printed by the one main process


# Issue 15: two runs, a failing rank and a full disk lose nothing.
@pytest.mark.parametrize('stage', ['scoring', 'finetune'])
def test_a_failing_main_process_ends_the_job(tmp_path, stage):
    """Rank 0 fails while rank 1 waits for it (scoring runs on the main process only) or works beside it."""
    (tmp_path / 'audit').mkdir()
    args = [tmp_path / 'audit', '--crash-rank', 0, '--crash-in', stage, '--', *MODEL, '--drop', 1, *TINY,
            '--num-images', 8, '--finetune-steps', 2, '--output-dir', tmp_path / 'run']
    # rank 1 left waiting for the failed main process would keep the launch running past the timeout: a failure
    proc = accelerate_launch('tests/scripts/compress_ranks.py', args, timeout=150, env={'OMP_NUM_THREADS': '1'})
    assert proc.returncode != 0 and 'injected failure on rank 0' in proc.stderr, launch_log(proc)


def _launch_compress(tmp_path, teacher_files, extra=()):
    weights, latency = teacher_files
    audit = tmp_path / 'audit'
    audit.mkdir()
    out = tmp_path / 'run'
    args = [audit, *extra, '--', *compress_args(out, weights, latency)[1:]]
    return accelerate_launch('tests/scripts/compress_ranks.py', args, timeout=600), audit, out


# Issue 7: interrupted runs, untouched inputs, determinism and failing ranks.
def test_two_ranks_never_write_the_same_file(tmp_path, teacher_files):
    proc, audit, out = _launch_compress(tmp_path, teacher_files)
    assert proc.returncode == 0, launch_log(proc)
    root = os.path.realpath(out) + os.sep  # the run's files (not /dev/null or system temp files)
    writes = [{p for p in open(audit / f'rank{r}.txt').read().split() if p.startswith(root)} for r in (0, 1)]
    assert writes[0] and writes[1], 'both ranks wrote something (their synthesis shards at least)'
    assert not writes[0] & writes[1], f'both ranks wrote {sorted(writes[0] & writes[1])}'
    assert any('metadata-rank1' in p for p in writes[1])
    assert os.path.isfile(out / 'report.json')


# Issue 7: interrupted runs, untouched inputs, determinism and failing ranks.
def test_a_crashing_rank_stops_the_job_with_its_error(tmp_path, teacher_files):
    """The launcher stops rank 0 when rank 1 crashes; rank 0 left waiting for it would keep the launch running
    until accelerate_launch's timeout, which fails the test."""
    proc, _, out = _launch_compress(tmp_path, teacher_files, ['--crash-rank', '1'])
    assert proc.returncode != 0
    assert 'injected failure on rank 1' in proc.stderr, launch_log(proc)
    assert not os.path.exists(out / 'report.json')
