"""Finetune a tiny random model on random images; run alone or under ``accelerate launch``.

Used by tests/test_finetune.py to compare 1 and 2 processes and to check resume. Writes the final
student state dict and loss history to --out.
"""
import argparse
import os
import sys

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))  # conftest's helpers; the package is installed
from conftest import randomize_norms  # noqa: E402
from practise_df import create_model, drop_blocks  # noqa: E402
from practise_df.finetune import FinetuneConfig, finetune, make_accelerator  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--steps', type=int, default=6)
    p.add_argument('--loss', default='mir')
    p.add_argument('--freeze-bn', action='store_true')
    p.add_argument('--checkpoint-every', type=int, default=0)
    p.add_argument('--crash-at', type=int, default=0, help='raise after this optimizer step')
    p.add_argument('--resume', action='store_true')
    args = p.parse_args()

    torch.manual_seed(0)
    teacher = randomize_norms(create_model('timm:resnet18', num_classes=5))
    student = drop_blocks(teacher, ['layer2.1', 'layer3.1'])
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 5, (32,), generator=gen))
    config = FinetuneConfig(loss=args.loss, steps=args.steps, batch_size=args.batch_size, lr=0.01,
                            freeze_bn=args.freeze_bn, checkpoint_every=args.checkpoint_every, keep_checkpoints=10)

    def crash(step, loss):
        if step == args.crash_at:
            raise KeyboardInterrupt(f'simulated crash at step {step}')

    accelerator = make_accelerator(args.out, config, cpu=True)
    history = finetune(student, teacher, data, config, accelerator=accelerator, output_dir=args.out,
                       resume=args.resume, progress=False, on_step=crash if args.crash_at else None)
    if accelerator.is_main_process:
        torch.save({'state_dict': student.state_dict(), 'history': history}, os.path.join(args.out, 'final.pt'))


if __name__ == '__main__':
    main()
