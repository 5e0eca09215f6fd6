"""Synthesise 5 images as one rank of ``accelerate launch``; used by tests/test_synth.py."""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(HERE, '..', '..')]
from test_synth import DATA_CONFIG, TINY  # noqa: E402
from conftest import randomize_norms  # noqa: E402
from accelerate import PartialState  # noqa: E402
import synth  # noqa: E402
from practise_df import create_model  # noqa: E402

if __name__ == '__main__':
    state = PartialState(cpu=True)
    torch.manual_seed(0)
    model = randomize_norms(create_model('timm:test_resnet', num_classes=10), seed=1)
    summary = synth.synthesize(model, sys.argv[1], 5, data_config=DATA_CONFIG, batch_size=2, config=TINY,
                               progress=False)
    assert state.num_processes == 2 and summary['num_images'] == 5
    assert summary['generated'] == (3 if state.process_index == 0 else 2)  # batches 0, 2 (one image) | 1
