import importlib
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

# As the command line does (practise_df/cli/_run.py): the tiny test models reach 1x1 maps, where Intel MKL's
# GEMM differs between runs with several threads unless its reproducible mode is on. Set before torch runs.
os.environ.setdefault('MKL_CBWR', 'AUTO')
# One torch thread per test process (and the commands the tests start inherit it): the tests' tensors are too
# small to gain from more, pytest-xdist runs one process per core, and OpenMP threads that wait for each other
# on a busy machine made a test 13x slower (24 s instead of 1.8 s). `OMP_NUM_THREADS=2 pytest` overrides it.
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from safetensors.torch import save_file

from practise_df import CompressConfig, create_model, find_blocks
from practise_df.cli import main

SMALL = (3, 64, 64)
# Device of the device-aware tests (corruptions, robustness), timm's convention: `TORCH_DEVICE=cuda pytest ...`.
DEVICE = torch.device(os.environ.get('TORCH_DEVICE', 'cpu'))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The environment of a practise-df command the tests start as a process (signals, kills, recipes).
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
# The model of the command-line tests: timm resnet18 at 32 px (random weights unless --weights says).
MODEL = ['--model', 'timm:resnet18', '--input-size', '32']
# The cheapest compress run: 4 synthesized images, 2 steps, one block dropped, no finetuning.
TINY = ['--num-images', '4', '--heldout-images', '1', '--synth-batch-size', '2', '--synth-steps', '2',
        '--score-images', '2', '--adaptor-steps', '1', '--finetune-steps', '0', '--finetune-batch-size', '2',
        '--latency-batch-size', '1', '--latency-repeats', '1']
TEACHER_SIZE = 32  # the input size of the teacher_files runs


def free_port() -> int:
    """A TCP port no one listens on now (the system picks it)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def accelerate_launch(script, args=(), processes=2, timeout=900, env=None):
    """Run ``script`` under ``accelerate launch`` as users do. On a machine without GPUs ``--multi_gpu``
    is accelerate's torchrun launcher with the gloo backend: real CPU processes. (``--cpu
    --num_processes 2`` starts one process unless an MPI hostfile is configured.) A launch still running after
    ``timeout`` seconds fails the test: a rank left waiting for another is the usual cause."""
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', '--num_processes', str(processes)]
    # a free port of its own, not torchrun's fixed 29500: pytest-xdist may run two launches at once
    cmd += ['--multi_gpu', '--main_process_port', str(free_port())] if processes > 1 else ['--cpu']
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHONPATH=ROOT, **(env or {}))
    try:
        return subprocess.run(cmd + [os.path.join(ROOT, script), *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors='replace') if isinstance(e.stderr, bytes) else (e.stderr or '')
        pytest.fail(f'{script} still ran after {timeout} s (a rank left waiting for another?):\n{stderr[-3000:]}')


def cli_commands():
    """{name: parser} of every ``practise-df`` subcommand."""
    from practise_df.cli import build_parser
    return next(a for a in build_parser()._actions if a.choices and 'compress' in a.choices).choices


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of one practise-df command; argparse errors exit 2 too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert 'Traceback' not in err, err
    return code, out, err


def launch_log(proc, chars=1500):
    """The end of each rank's own output (torchrun prefixes its lines ``[rankN]:``) and of the launcher's,
    for an assertion message: the rank that failed first is often not the one whose lines come last."""
    ranks = {}
    for line in proc.stderr.splitlines():
        match = re.match(r'\[rank(\d+)\]:', line)
        ranks.setdefault(f'rank {match.group(1)}' if match else 'launcher', []).append(line)
    return '\n'.join(f'--- {who} ---\n' + '\n'.join(lines)[-chars:] for who, lines in sorted(ranks.items()))


def make_image_folder(root, classes=('a', 'b'), per_class=3, size=48, flat=0, seed=0, fmt='png'):
    """Write random RGB images: one subfolder per class, plus ``flat`` images at the top level."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    paths = []
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            paths.append(os.path.join(root, c, f'{i}.{fmt}'))
    paths += [os.path.join(root, f'flat{i}.{fmt}') for i in range(flat)]
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
    return root


def randomize_norms(model, seed=0):
    """Give every BatchNorm random affine parameters and statistics. timm zero-initialises the last BN of
    each residual branch, which would make every random block an exact identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each test starts from a clean one."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(str(tmp_path / 'images'), classes=('a', 'b', 'c'), per_class=4)


@pytest.fixture(scope='session')
def tiny_resnet():
    """timm resnet18 at 64 channels in every stage (BasicBlocks, the same candidates layer1.0 ... layer4.1 as
    resnet18, a fifteenth of its parameters), random weights, seed-fixed."""
    torch.manual_seed(0)
    return randomize_norms(create_model('timm:resnet18', num_classes=10, channels=(64, 64, 64, 64)))


def boom(*args, **kwargs):
    raise AssertionError('the long work started before the arguments were checked')


LONG_WORK = {'practise_df.pipeline': 'drop_stage',  # images, scores and the drop: score's and compress's
             'synth.synthesize': 'synthesize_shard',
             'practise_df.scoring': 'score_blocks', 'practise_df.robustness': 'evaluate_robustness',
             'practise_df.cli.evaluate': 'evaluate_source', 'practise_df.cli.latency': 'model_latency_report',
             'practise_df.cli.export': 'export_model'}


@pytest.fixture
def no_long_work(monkeypatch):
    """Synthesis, scoring, evaluation, timing and export fail the test if they start."""
    for module, name in LONG_WORK.items():
        monkeypatch.setattr(importlib.import_module(module), name, boom)


@pytest.fixture(scope='module')
def images(tmp_path_factory):  # numbered class folders: labels a 1000-class model can be scored on
    return make_image_folder(str(tmp_path_factory.mktemp('data') / 'images'), classes=('0', '1'), per_class=3,
                             size=40)


@pytest.fixture
def users(tmp_path):
    """A folder and a file of the user's."""
    folder = tmp_path / 'u'
    (folder / '0000').mkdir(parents=True)
    Image.new('RGB', (8, 8), 'red').save(folder / '0000' / '00000000.png')  # looks like a synthesized image
    (folder / 'thesis.txt').write_text('four years of work')
    file = tmp_path / 'thesis.txt'
    file.write_text('four years of work')
    return folder, file


def run_settings(out, **changes):
    """What compress writes as run.json (the settings of a run on ``out``)."""
    config = CompressConfig(model='timm:resnet18', output_dir=str(out), input_size=32, scoring={'drop': 1},
                            **changes)
    return json.dumps(config.to_dict())


@pytest.fixture(scope='module')
def teacher_files(tmp_path_factory):
    """A resnet18 teacher with non-trivial random weights in a local file, and a fixed per-block latency
    table (measured latency is noisy; fixing it makes the block choice a function of the seed alone)."""
    root = tmp_path_factory.mktemp('teacher')
    torch.manual_seed(0)
    model = randomize_norms(create_model('timm:resnet18'))
    weights = str(root / 'resnet18.safetensors')
    save_file(model.state_dict(), weights)
    blocks = find_blocks(model, (3, TEACHER_SIZE, TEACHER_SIZE))
    table = {b: {'saved_ms': 1.0 + i, 'saved_pct': 2.0 + i} for i, b in enumerate(blocks)}
    latency = str(root / 'block_latency.json')
    with open(latency, 'w') as f:
        json.dump({'blocks': table}, f)
    return weights, latency


def compress_args(out, weights, latency):
    return ['compress', '--model', 'timm:resnet18', '--weights', weights, '--block-latency', latency,
            '--num-images', '24', '--heldout-images', '8', '--synth-batch-size', '4', '--synth-steps', '20',
            '--input-size', str(TEACHER_SIZE), '--score-images', '16', '--adaptor-steps', '10', '--drop', '2',
            '--finetune-steps', '12', '--finetune-batch-size', '4', '--checkpointing-steps', '2',
            '--latency-batch-size', '2', '--latency-repeats', '2', '--output-dir', str(out)]
