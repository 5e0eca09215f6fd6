"""Top-1/top-5 accuracy and agreement with a teacher."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str = 'cpu', teacher: Optional[nn.Module] = None,
             progress: bool = True) -> Dict[str, float]:
    """Accuracy of ``model`` on labelled batches ``(images, labels)``; labels of -1 count as unlabeled.

    With ``teacher``: also the fraction of images where both predict the same top-1 class
    (``agreement``), which needs no labels.
    """
    model = model.eval().to(device)
    if teacher is not None:
        teacher = teacher.eval().to(device)
    n = labelled = top1 = top5 = agree = 0
    for images, labels in tqdm(loader, desc='evaluating', disable=not progress, leave=False):
        images, labels = images.to(device), torch.as_tensor(labels).to(device)
        logits = model(images)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        has_label = labels >= 0
        hits = topk[has_label] == labels[has_label, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        labelled += has_label.sum().item()
        if teacher is not None:
            agree += (teacher(images).argmax(1) == topk[:, 0]).sum().item()
        n += len(images)
    result = {'images': n, 'labelled': labelled}
    if labelled:
        result.update(top1=100.0 * top1 / labelled, top5=100.0 * top5 / labelled)
    if teacher is not None and n:
        result['agreement'] = 100.0 * agree / n
    return result
