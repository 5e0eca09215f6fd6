"""Top-1/top-5 accuracy and agreement with a teacher: one tally, used by every evaluation."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from synth import load_images

from ._distributed import gather, sharded_batches, sum_over_processes


class Tally:
    """Running counts over batches: top-1/top-5 hits on labelled images (labels of -1 count as unknown),
    and, given the teacher's top-1 predictions, agreement with the teacher and the teacher's own top-1."""

    def __init__(self):
        self.images = self.labelled = self.top1 = self.top5 = 0
        self.compared = self.agree = self.teacher_top1 = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, teacher_pred: Optional[torch.Tensor] = None
            ) -> torch.Tensor:
        """Count one batch; returns its top-1 predictions."""
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
        known = labels >= 0
        hits = topk[known] == labels[known, None]
        self.images += len(topk)
        self.labelled += int(known.sum())
        self.top1 += int(hits[:, 0].sum())
        self.top5 += int(hits.any(dim=1).sum())
        if teacher_pred is not None:
            self.compared += len(topk)
            self.agree += int((teacher_pred == topk[:, 0]).sum())
            self.teacher_top1 += int((teacher_pred[known] == labels[known]).sum())
        return topk[:, 0]

    FIELDS = ('images', 'labelled', 'top1', 'top5', 'compared', 'agree', 'teacher_top1')

    @staticmethod
    def sum_over_processes(tallies) -> None:
        """Add up, in place, the counts every process made on its share of the batches (no image twice)."""
        tallies = list(tallies)
        counts = torch.tensor([[getattr(t, f) for f in Tally.FIELDS] for t in tallies], dtype=torch.long)
        for t, row in zip(tallies, sum_over_processes(counts).tolist()):
            for f, v in zip(Tally.FIELDS, row):
                setattr(t, f, v)

    def result(self, top5: bool = True, teacher_top1: bool = False) -> Dict[str, float]:
        """Percentages of what could be measured: ``top1`` (and ``top5``, ``teacher_top1``) with labels,
        ``agreement`` with teacher predictions."""
        out: Dict[str, float] = {}
        if self.labelled:
            out['top1'] = 100.0 * self.top1 / self.labelled
            if top5:
                out['top5'] = 100.0 * self.top5 / self.labelled
            if teacher_top1 and self.compared:
                out['teacher_top1'] = 100.0 * self.teacher_top1 / self.labelled
        if self.compared:
            out['agreement'] = 100.0 * self.agree / self.compared
        return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str = 'cpu',
             teacher: Optional[Union[nn.Module, torch.Tensor]] = None, progress: bool = True,
             return_predictions: bool = False) -> Dict[str, float]:
    """Accuracy of ``model`` on labelled batches ``(images, labels)``; labels of -1 count as unlabeled.

    With ``teacher``: also the fraction of images where both predict the same top-1 class
    (``agreement``), which needs no labels. ``teacher`` is a model, or the teacher's top-1 predictions
    for the same loader in the same order (``result['predictions']`` of an earlier call with
    ``return_predictions=True``), which saves running the teacher again for every student.

    Under ``accelerate launch`` the batches are split over the processes (batch i to process i mod n) and the
    counts summed, each image once: the numbers are those of one process. A DataLoader must then keep a
    fixed order (no shuffling).
    """
    model = model.eval().to(device)
    if isinstance(teacher, nn.Module):
        teacher = teacher.eval().to(device)
    tally, predictions = Tally(), []
    for _, start, (images, labels) in tqdm(sharded_batches(loader), desc='evaluating', disable=not progress,
                                           leave=False):
        images, labels = images.to(device), torch.as_tensor(labels).to(device)
        teacher_pred = None
        if isinstance(teacher, nn.Module):
            teacher_pred = teacher(images).argmax(1)
        elif teacher is not None:
            if len(teacher) < start + len(images):
                raise ValueError(f'Got {len(teacher)} teacher predictions for a loader with more images; pass '
                                 'the predictions made on the same loader.')
            teacher_pred = teacher[start:start + len(images)].to(device)
        predictions.append((start, tally.add(model(images), labels, teacher_pred).cpu()))
    Tally.sum_over_processes([tally])
    if teacher is not None and not isinstance(teacher, nn.Module) and len(teacher) != tally.images:
        raise ValueError(f'Got {len(teacher)} teacher predictions for {tally.images} images; pass the predictions '
                         'made on the same loader.')
    result = {'images': tally.images, 'labelled': tally.labelled, **tally.result()}
    if return_predictions:
        predictions = [p for _, p in sorted(gather(predictions), key=lambda item: item[0])]  # the loader's order
        result['predictions'] = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
    return result


def evaluate_source(model: nn.Module, source: str, data_config: dict, teacher: Optional[nn.Module] = None,
                    batch_size: int = 32, max_images: Optional[int] = None, seed: int = 0, num_workers: int = 0,
                    device: str = 'cpu', progress: bool = True) -> Dict[str, float]:
    """:func:`evaluate` on an image source (folder, ``hf:NAME``, saved dataset) preprocessed with the model's
    data config; adds ``skipped_files`` (images that did not decode and were left out)."""
    dataset = load_images(source, data_config, num_images=max_images, seed=seed, crops=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    return {**evaluate(model, loader, device, teacher=teacher, progress=progress),
            'skipped_files': getattr(dataset, 'skipped', 0)}
