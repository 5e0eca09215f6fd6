"""Issue 14 exploration: recovery variants outside the library, to see whether any of them lifts the real
top-1 of the dropped tf_efficientnet_lite0 above plain dropping.

    python benchmarks/explore_recovery.py shift                      # restore each dropped block's mean output
    python benchmarks/explore_recovery.py mir --train norm --data photos --lr 0.01
    python benchmarks/explore_recovery.py stagewise --data natural --lr 1e-4

Variants (all at bench_datafree's 25% block set, from the plainly dropped student, BatchNorm statistics
and classifier frozen, batch 32, SGD momentum 0.9, gradients clipped at norm 5, step x0.1 at 40%):

- ``shift``: no training. Each dropped block becomes ``x + beta``, beta the bias of the block's last
  BatchNorm: the residual branch's mean output under the teacher's own statistics (data-free, as DFQ's bias
  correction). Measured beside the plainly dropped student.
- ``mir --train all|norm``: end-to-end MiR on pre-pooling features, training every weight or only the
  BatchNorm affine parameters (33k of 4.7M): does a low-capacity recovery drift less?
- ``stagewise``: each stage that lost a block is trained alone to map the teacher's input of that stage to
  the teacher's output (MSE), as block reconstruction does in data-free quantization (BRECQ, Genie), so the
  change stays local and errors cannot compound.
- ``bnstats --bn-mode adabn|delta``: no training. The running statistics of every BatchNorm after the first
  dropped block are re-estimated, because dropping shifts the distribution those layers normalize.
  ``adabn`` sets them to the student's statistics on the images (AdaBN; right only for real images);
  ``delta`` keeps the teacher's running statistics and moves them by the shift dropping causes *on the
  images*: mean + (student mean - teacher mean), variance x (student var / teacher var), so out-of-domain
  images only have to show the change, not the real distribution. Each layer is corrected before the
  next is measured, in one pass over the images as one batch. With ``--data real`` the first 250 dev images calibrate
  and the other 250 measure (``dev_top1_heldout`` beside the dropped student's on the same 250).
- ``interpolate --student NAME``: no training. The weights of a finetuned student saved by bench_datafree
  (``runs/bench_datafree/NAME/student``) are interpolated with the dropped student's, ``dropped + a *
  (finetuned - dropped)`` for a = 0.1, 0.25, 0.5, 0.75, as WiSE-FT does to keep what finetuning gained without
  all of its drift. Several comma-separated students are averaged first (a model soup: they all start
  from the dropped student, so their updates can be averaged).
- ``head --data photos|natural|fast|real-half``: no gradient training. A linear correction of the dropped
  student's pooled features, fitted in closed form (ridge regression toward the identity) to the teacher's
  pooled features (``--fit feature``: ``A s + c``, then folded into the classifier, ``W A`` and ``W c + b``;
  a 1x1-conv adaptor before global pooling, as pooling is linear), or only per channel (``diag``). (Fitting
  the logits instead gives the same classifier: the ridge solution is linear in its targets.) The ridge weight is swept
  (relative to the features' mean variance; the largest is a mean shift only). Cheap: one forward pass of
  teacher and student per image, and the dev top-1 of each fit from the student's stored dev features.
- ``teacher-bn``: how the teacher itself takes BatchNorm statistics other than its running ones, on the
  second 250 dev images: forward in train mode (batch statistics, batches of 50 and of 250), and AdaBN
  (every layer re-estimated on the first 250 dev images). Train-mode BatchNorm is what the official
  few-shot setting (the ``mir_real`` ceiling of bench_datafree) finetunes with.

This loop is written here, not taken from ``practise_df.finetune``, because it trains parts of the student
the library does not expose; it records the dev top-1 (the 500 dev images of bench_datafree, never the
test images) every ``--eval-every`` steps, and the top-1 on the second 250 dev images alone
(``dev_top1_heldout``), the images ``--data real-half`` does not train on, so every image source can be set
beside real images on the same held-out images. Results are appended to ``results/explore_recovery.json``.
"""
import argparse
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from common import IMAGENET_SAMPLE, ROOT, add_threads_argument, lite0_teacher, parse_args, read_results, write_results
from bench_datafree import HERE, POINTS, POOLS, Row, split_sample, stack, training_photos
from practise_df import drop_blocks, evaluate, load_compressed
from practise_df.finetune import interpolate_weights
from synth import SingleImageCrops, SynthesizedImages
from synth.data import ImageFolderDataset, eval_transform, train_transform


class Shift(nn.Module):
    """A dropped block replaced by its mean output: ``x + beta``."""

    def __init__(self, beta: torch.Tensor):
        super().__init__()
        self.register_buffer('beta', beta.detach().clone().view(1, -1, 1, 1))

    def forward(self, x):
        return x + self.beta


def stage_io(model, x):
    """Inputs and outputs of every stage of a timm EfficientNet's ``blocks``."""
    x = model.bn1(model.conv_stem(x))
    ins, outs = [], []
    for stage in model.blocks:
        ins.append(x)
        x = stage(x)
        outs.append(x)
    return ins, outs


@torch.no_grad()
def bn_input_stats(model, images, names, batch_size=64):
    """Per-channel (mean, variance) of the input of each named BatchNorm over ``images``, model in eval mode."""
    sums = {}

    def hook(module, inputs, name):
        x = inputs[0].double().transpose(0, 1).flatten(1)
        n, s1, s2 = sums.get(name, (0, 0.0, 0.0))
        sums[name] = (n + x.shape[1], s1 + x.sum(1), s2 + (x * x).sum(1))

    handles = [model.get_submodule(name).register_forward_pre_hook(lambda m, i, name=name: hook(m, i, name))
               for name in names]
    model.eval()
    for chunk in images.split(batch_size):
        model(chunk)
    for h in handles:
        h.remove()
    return {name: (s1 / n, s2 / n - (s1 / n) ** 2) for name, (n, s1, s2) in sums.items()}


@torch.no_grad()
def recalibrate(teacher, student, images, first_dropped, mode):
    """Re-estimate the student's BatchNorm statistics after ``first_dropped`` (all if None; see ``bnstats``).

    One forward pass over all ``images`` as one batch: each layer's statistics are set from its input just
    before it normalizes, so every layer sees the corrected layers upstream (as AdaBN's train-mode pass).
    """
    order = [name for name, _ in student.named_modules()]
    start = order.index(first_dropped) if first_dropped else -1
    names = [name for name, m in student.named_modules() if isinstance(m, nn.BatchNorm2d) and order.index(name) > start]
    teacher_stats = bn_input_stats(teacher, images, names) if mode == 'delta' else None

    def set_statistics(bn, inputs, name):
        x = inputs[0].double().transpose(0, 1).flatten(1)
        mean, var = x.mean(1), x.var(1, unbiased=False)
        if mode == 'delta':
            t_bn, (t_mean, t_var) = teacher.get_submodule(name), teacher_stats[name]
            mean = t_bn.running_mean.double() + mean - t_mean
            var = t_bn.running_var.double() * (var + bn.eps) / (t_var + bn.eps)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)

    handles = [student.get_submodule(name).register_forward_pre_hook(
        lambda m, i, name=name: set_statistics(m, i, name)) for name in names]
    student.eval()
    student(images)
    for h in handles:
        h.remove()
    return names


def still_images(data, cfg, dev, photo_crops, cutmix):
    """The images a variant that does not train measures on, as one tensor: ``photo_crops`` photo crops, the
    first 250 dev images (``real``, ``real-half``), or a synthesized pool with its flips."""
    if data == 'photos':
        crops = SingleImageCrops(training_photos(), photo_crops, cfg, seed=0, scale=Row('photos').photo_scale,
                                 cutmix=cutmix)
        return torch.stack([crops[i][0] for i in range(len(crops))])
    if data in ('real', 'real-half'):
        return dev[:250]
    pool = SynthesizedImages(os.path.join(POOLS, f'{data}224_s0'), cfg['input_size'], cfg['mean'], cfg['std'],
                             augment=False)
    images = torch.stack([pool[i][0] for i in range(len(pool))])
    return torch.cat([images, images.flip(3)])


@torch.no_grad()
def pooled(model, images, batch_size=64):
    """Pooled pre-logit features (float64) of ``images``, model in eval mode."""
    model.eval()
    return torch.cat([model.forward_head(model.forward_features(x), pre_logits=True)
                      for x in images.split(batch_size)]).double()


def ridge_toward(inputs, targets, lam):
    """``D, c`` minimizing ``sum |targets - inputs D^T - c|^2 + lam n |D|^2`` (rows are samples)."""
    mean_in, mean_out = inputs.mean(0), targets.mean(0)
    xc, yc = inputs - mean_in, targets - mean_out
    n, d = xc.shape
    gram = xc.T @ xc + lam * n * torch.eye(d, dtype=xc.dtype)
    delta = torch.linalg.solve(gram, xc.T @ yc).T
    return delta, mean_out - delta @ mean_in


def fit_head(args, teacher, student, cfg, dev, dev_labels, result, save):
    """The ``head`` variant: closed-form linear corrections of the student's pooled features (docstring)."""
    if args.data == 'real':
        raise SystemExit('head: --data real is not supported (photos, natural, fast, real-half)')
    images = still_images(args.data, cfg, dev, args.fit_images, cutmix=Row('photos').cutmix)
    start = time.time()
    s_fit, t_fit, s_dev = pooled(student, images), pooled(teacher, images), pooled(student, dev)
    weight, bias = student.classifier.weight.double(), student.classifier.bias.double()
    scale = s_fit.var(0).mean().item()  # the ridge weight is relative to the features' variance

    def top1(logits, labels):
        return round(100 * logits.argmax(1).eq(labels).double().mean().item(), 1)

    result.update(fit=args.fit, data=args.data, fit_images=len(images), seconds_features=round(time.time() - start),
                  dev_top1_check=top1(s_dev @ weight.T + bias, dev_labels), curve=[])
    for lam in (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, float('inf')):
        if args.fit == 'feature':
            if lam == float('inf'):
                new_w, new_b = weight, bias + weight @ (t_fit - s_fit).mean(0)
            else:
                delta, c = ridge_toward(s_fit, t_fit - s_fit, lam * scale)
                new_w, new_b = weight + weight @ delta, bias + weight @ c
        else:  # diag
            sc, rc = s_fit - s_fit.mean(0), (t_fit - s_fit) - (t_fit - s_fit).mean(0)
            if lam == float('inf'):
                a = torch.zeros_like(sc[0])
            else:
                a = (sc * rc).mean(0) / (sc.var(0, unbiased=False) + lam * scale)
            c = (t_fit - s_fit).mean(0) - a * s_fit.mean(0)
            new_w, new_b = weight * (1 + a), bias + weight @ c
        logits = s_dev @ new_w.T + new_b
        point = {'ridge': lam if lam != float('inf') else 'mean shift only', 'dev_top1': top1(logits, dev_labels),
                 'dev_top1_heldout': top1(logits[250:], dev_labels[250:]),
                 'fit_agreement': top1(s_fit @ new_w.T + new_b, (t_fit @ weight.T + bias).argmax(1))}
        result['curve'].append(point)
        print(point, flush=True)
    result['dropped_dev_top1_heldout'] = top1((s_dev @ weight.T + bias)[250:], dev_labels[250:])
    return save()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('variant', choices=('shift', 'mir', 'stagewise', 'bnstats', 'teacher-bn', 'interpolate', 'head'))
    p.add_argument('--train', choices=('all', 'norm'), default='all', help='mir: which parameters train')
    p.add_argument('--data', choices=('photos', 'natural', 'fast', 'real', 'real-half'), default='photos',
                   help='photo crops, the synthesized pool natural224_s0 / fast224_s0, the 500 dev images (a '
                        'control: their dev top-1 is measured on the images trained on), or the first 250 dev '
                        'images (real-image control measured on the other 250: dev_top1_heldout)')
    p.add_argument('--min-confidence', type=float, default=0.0,
                   help="photos: train only on crops the teacher classifies with at least this softmax probability")
    p.add_argument('--normalize', action='store_true',
                   help="divide each channel's squared error by the teacher's variance of that channel (in the batch), "
                        'so that large-magnitude channels do not dominate the loss')
    p.add_argument('--bn-mode', choices=('adabn', 'delta'), default='delta',
                   help='bnstats: how statistics are re-estimated')
    p.add_argument('--calib-images', type=int, default=256, help='bnstats: photo crops to calibrate on')
    p.add_argument('--fit', choices=('feature', 'diag'), default='feature', help='head: what is fitted')
    p.add_argument('--fit-images', type=int, default=4096, help='head: photo crops to fit on')
    p.add_argument('--student', help='interpolate: a run folder of bench_datafree (25_mirkd_photos_seed0_it200_b32)')
    p.add_argument('--lr', type=float, default=0.002)
    p.add_argument('--iterations', type=int, default=100)
    p.add_argument('--eval-every', type=int, default=25)
    p.add_argument('--point', choices=sorted(POINTS), default='25')
    add_threads_argument(p)
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'explore_recovery.json'))
    args = parse_args(p)
    if args.variant == 'interpolate' and not args.student:
        p.error('interpolate needs --student NAME (a folder under runs/bench_datafree)')
    torch.manual_seed(0)

    teacher, cfg = lite0_teacher()
    teacher.eval()
    sample = ImageFolderDataset(IMAGENET_SAMPLE, eval_transform(cfg))
    dev_idx = split_sample(len(sample))[1]
    dev, dev_labels = stack(sample, dev_idx)

    def dev_top1(model):
        return evaluate(model, list(zip(dev.split(100), dev_labels.split(100))), progress=False)['top1']

    def heldout_top1(model):  # the 250 dev images the real-half control does not train on
        return evaluate(model, [(dev[250:], dev_labels[250:])], progress=False)['top1']

    def dev_and_heldout_top1(model):  # both from one pass over the dev images (the held-out half is in them)
        result = evaluate(model, list(zip(dev.split(100), dev_labels.split(100))), progress=False,
                          return_predictions=True)
        return result['top1'], 100.0 * int(result['predictions'][250:].eq(dev_labels[250:]).sum()) / 250

    blocks = POINTS[args.point]
    student = drop_blocks(teacher, blocks)
    trained = args.train if args.variant == 'mir' else 'stages'
    key = f'{args.point}|{args.variant}' + ('' if args.variant == 'shift' else f'|{trained}|{args.data}|lr{args.lr}')
    if args.variant == 'teacher-bn':
        key = 'teacher-bn'
    if args.variant == 'interpolate':
        key = f'{args.point}|interpolate|{args.student}'
    if args.variant == 'bnstats':
        key = f'{args.point}|bnstats|{args.bn_mode}|{args.data}'
        key += f'|n{args.calib_images}' if args.data == 'photos' else ''
    if args.variant == 'head':
        key = f'{args.point}|head|{args.fit}|{args.data}' + (f'|n{args.fit_images}' if args.data == 'photos' else '')
    key += f'|conf{args.min_confidence}' if args.min_confidence > 0 else ''
    key += '|normalized' if args.normalize else ''
    key += f'|it{args.iterations}' if args.variant != 'shift' and args.iterations != 100 else ''
    result = {'variant': args.variant, 'point': args.point, 'blocks': blocks, 'dropped_dev_top1': dev_top1(student),
              'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'threads': args.threads}

    def save():  # read again: two variants may run side by side into one file
        results = read_results(args.out)
        results[key] = result
        write_results(args.out, results)
        print(key, json.dumps(result), flush=True)

    if args.variant == 'shift':
        measured = {}  # the branch's mean output on 64 dev images, to check beta against
        hooks = [teacher.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: measured.__setitem__(name, (o - i[0]).mean((0, 2, 3)))) for name in blocks]
        with torch.no_grad():
            teacher(dev[:64])
        for h in hooks:
            h.remove()
        result['cosine_beta_vs_measured_mean'] = {}
        for name in blocks:
            last_bn = [m for m in teacher.get_submodule(name).modules() if isinstance(m, nn.BatchNorm2d)][-1]
            student.set_submodule(name, Shift(last_bn.bias))
            result['cosine_beta_vs_measured_mean'][name] = round(
                F.cosine_similarity(last_bn.bias.detach(), measured[name], dim=0).item(), 4)
        result['dev_top1'] = dev_top1(student)
        return save()

    if args.variant == 'teacher-bn':
        x, y = dev[250:], dev_labels[250:]
        result = {'variant': args.variant, 'date': result['date'], 'eval_mode': heldout_top1(teacher)}
        with torch.no_grad():
            teacher.train()
            for size in (50, 250):
                predictions = torch.cat([teacher(chunk).argmax(1) for chunk in x.split(size)])
                result[f'train_mode_batch{size}'] = round(100 * predictions.eq(y).float().mean().item(), 1)
            teacher.eval()
        recalibrate(teacher, teacher, dev[:250], None, 'adabn')
        result['adabn_250'] = heldout_top1(teacher)
        return save()

    if args.variant == 'interpolate':
        finetuned = [load_compressed(os.path.join(ROOT, 'runs', 'bench_datafree', name, 'student'))
                     for name in args.student.split(',')]
        start_weights = {k: v.clone() for k, v in student.state_dict().items()}
        end_weights = {k: sum(f.state_dict()[k] for f in finetuned) / len(finetuned) if v.is_floating_point() else v
                       for k, v in start_weights.items()}  # several students: their average (a model soup)
        student.load_state_dict(end_weights)
        result.update(student=args.student, finetuned_dev_top1=dev_top1(student), curve=[])
        for a in (0.1, 0.25, 0.5, 0.75):
            student.load_state_dict(end_weights)
            interpolate_weights(student, start_weights, a)  # what finetune's mix does
            result['curve'].append({'alpha': a, 'dev_top1': dev_top1(student)})
        return save()

    if args.variant == 'head':
        return fit_head(args, teacher, student, cfg, dev, dev_labels, result, save)

    if args.variant == 'bnstats':
        first_dropped = [name for name, _ in teacher.named_modules() if name in blocks][0]
        real = args.data in ('real', 'real-half')  # both calibrate on the first 250 dev images
        images = still_images(args.data, cfg, dev, args.calib_images, cutmix=0.0)
        if real:
            result['dropped_dev_top1_heldout'] = heldout_top1(student)
        start = time.time()
        result['recalibrated_layers'] = len(recalibrate(teacher, student, images, first_dropped, args.bn_mode))
        result.update(calib_images=len(images), seconds=round(time.time() - start), dev_top1=dev_top1(student))
        if real:
            result['dev_top1_heldout'] = heldout_top1(student)
        return save()

    result['dropped_dev_top1_heldout'] = heldout_top1(student)  # the half real-half does not train on
    student.requires_grad_(False)
    if args.variant == 'stagewise':
        stages = sorted({int(b.split('.')[1]) for b in blocks})
        params = [q for s in stages for q in student.blocks[s].parameters()]
    else:
        params = [q for n, q in student.named_parameters() if not n.startswith('classifier')
                  and (args.train == 'all' or isinstance(student.get_submodule(n.rpartition('.')[0]), nn.BatchNorm2d))]
    for q in params:
        q.requires_grad_(True)
    n = args.iterations
    if args.data == 'photos':
        pool = SingleImageCrops(training_photos(), n * 32 * 50, cfg, seed=0, scale=Row('photos').photo_scale,
                                cutmix=Row('photos').cutmix)
    elif args.data in ('real', 'real-half'):
        pool = Subset(ImageFolderDataset(IMAGENET_SAMPLE, train_transform(cfg, scale=(0.08, 1.0))),
                      dev_idx if args.data == 'real' else dev_idx[:250])
    else:
        pool = SynthesizedImages(os.path.join(POOLS, f'{args.data}224_s0'), cfg['input_size'], cfg['mean'], cfg['std'],
                                 augment=True)
    g = torch.Generator().manual_seed(0)

    drawn = [0]  # photo crops drawn so far: fresh ones for every step

    @torch.no_grad()
    def batch(it):  # the other pools are drawn from at random
        if args.data != 'photos':
            return torch.stack([pool[i][0] for i in torch.randint(len(pool), (32,), generator=g).tolist()])
        kept = []
        while sum(len(k) for k in kept) < 32:
            x = torch.stack([pool[i][0] for i in range(drawn[0], drawn[0] + 32)])
            drawn[0] += 32
            kept.append(x if args.min_confidence <= 0 else
                        x[teacher(x).softmax(1).amax(1) >= args.min_confidence])
        return torch.cat(kept)[:32]

    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4 if args.train == 'all' else 0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, max(1, int(0.4 * n)), 0.1)
    result.update(trainable=sum(q.numel() for q in params), lr=args.lr, data=args.data, iterations=n, curve=[],
                  min_confidence=args.min_confidence, normalize=args.normalize)

    def mse(output, target):
        if not args.normalize:
            return F.mse_loss(output, target)
        variance = target.var(dim=(0, 2, 3), keepdim=True) + 1e-3
        return ((output - target) ** 2 / variance).mean()

    start = time.time()
    for it in range(n):
        x = batch(it)
        student.eval()  # BatchNorm statistics frozen
        with torch.no_grad():
            if args.variant == 'stagewise':
                t_in, t_out = stage_io(teacher, x)
            else:
                target = teacher.forward_features(x)
        if args.variant == 'stagewise':
            loss = sum(mse(student.blocks[s](t_in[s]), t_out[s]) for s in stages)
        else:
            loss = mse(student.forward_features(x), target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        scheduler.step()
        if (it + 1) % args.eval_every == 0 or it + 1 == n:
            top1, heldout = dev_and_heldout_top1(student)  # held out: comparable with real-half
            result['curve'].append({'step': it + 1, 'loss': loss.item(), 'dev_top1': top1, 'dev_top1_heldout': heldout})
            result.update(seconds=round(time.time() - start), crops_drawn=drawn[0])
            save()


if __name__ == '__main__':
    main()
