"""Finetune the quickstart student on its synthesized images with frozen vs train-mode BatchNorm and
compare top-1 on the first 200 images of ../shared/data/imagenet-sample (seed 0).

    python benchmarks/check_bn_mode.py runs/quickstart/synth
"""
import sys
import time

import torch
from accelerate.state import AcceleratorState, GradientState
from practise_df import drop_blocks, evaluate
from synth.data import ImageFolderDataset, image_loader, train_transform
from practise_df.finetune import FinetuneConfig, finetune, make_accelerator

from common import IMAGENET_SAMPLE, lite0_teacher

torch.set_num_threads(1)
t, cfg = lite0_teacher()
ev = image_loader(IMAGENET_SAMPLE, cfg, batch_size=50, max_images=200, seed=0)
s0 = drop_blocks(t, ['blocks.2.1', 'blocks.4.1'])
print('no finetune', evaluate(s0, ev, progress=False), flush=True)
train = ImageFolderDataset(sys.argv[1] if len(sys.argv) > 1 else 'runs/quickstart/synth', train_transform(cfg))
for freeze, lr in [(True, 0.005), (False, 0.005)]:
    s = drop_blocks(t, ['blocks.2.1', 'blocks.4.1'])
    c = FinetuneConfig(steps=40, batch_size=32, lr=lr, freeze_bn=freeze)
    st = time.time()
    finetune(s, t, train, c, accelerator=make_accelerator(None, c, cpu=True), progress=False)
    print('freeze', freeze, 'lr', lr, evaluate(s, ev, progress=False), f'{time.time()-st:.0f}s', flush=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
