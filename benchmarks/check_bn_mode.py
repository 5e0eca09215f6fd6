"""Finetune the quickstart student on its synthesized images with frozen vs train-mode BatchNorm and
compare top-1 on the first 200 images of ../shared/data/imagenet-sample (seed 0).

    python benchmarks/check_bn_mode.py runs/quickstart/synth
"""
import os
import sys
import time

import torch
from practise_df import create_model, drop_blocks, evaluate, resolve_data_config
from synth.data import image_loader
from practise_df.models import efficientnet_lite0_weights
from synth.data import ImageFolderDataset, train_transform
from practise_df.finetune import FinetuneConfig, finetune, make_accelerator
torch.set_num_threads(1)
t = create_model('timm:tf_efficientnet_lite0', weights=efficientnet_lite0_weights())
cfg = resolve_data_config(t)
SAMPLE = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'imagenet-sample')
ev = image_loader(SAMPLE, cfg, batch_size=50, max_images=200, seed=0)
s0 = drop_blocks(t, ['blocks.2.1', 'blocks.4.1'])
print('no finetune', evaluate(s0, ev, progress=False), flush=True)
train = ImageFolderDataset(sys.argv[1] if len(sys.argv) > 1 else 'runs/quickstart/synth', train_transform(cfg))
for freeze, lr in [(True, 0.005), (False, 0.005)]:
    s = drop_blocks(t, ['blocks.2.1', 'blocks.4.1'])
    c = FinetuneConfig(steps=40, batch_size=32, lr=lr, freeze_bn=freeze)
    st = time.time()
    finetune(s, t, train, c, accelerator=make_accelerator(None, c, cpu=True), progress=False)
    print('freeze', freeze, 'lr', lr, evaluate(s, ev, progress=False), f'{time.time()-st:.0f}s', flush=True)
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
