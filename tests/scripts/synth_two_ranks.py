"""Synthesise 5 images as one rank of ``accelerate launch``; used by tests/test_synth.py.

The main process writes the folder's settings file slowly, as on a busy disk, and rank 1 starts while it
does, so the other rank's check of the output folder meets a folder that holds only the file's
temporary name (CI once failed in that window)."""
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the test modules' helpers; the package is installed
from test_synth import DATA_CONFIG, TINY  # noqa: E402
from conftest import randomize_norms  # noqa: E402
from accelerate import PartialState  # noqa: E402
import synth  # noqa: E402
from practise_df import create_model  # noqa: E402

if __name__ == '__main__':
    state = PartialState(cpu=True)
    if state.is_main_process:
        rename = os.replace

        def slow_rename(src, dst):
            if dst.endswith('synth_config.json'):
                time.sleep(3)
            rename(src, dst)
        os.replace = slow_rename
    else:
        time.sleep(1.5)
    torch.manual_seed(0)
    model = randomize_norms(create_model('timm:test_resnet', num_classes=10), seed=1)
    summary = synth.synthesize(model, sys.argv[1], 5, data_config=DATA_CONFIG, batch_size=2, config=TINY,
                               progress=False)
    assert state.num_processes == 2 and summary['num_images'] == 5
    assert summary['generated'] == (3 if state.process_index == 0 else 2)  # batches 0, 2 (one image) | 1
