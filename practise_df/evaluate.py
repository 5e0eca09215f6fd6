"""Top-1/top-5 accuracy and agreement with a teacher."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str = 'cpu',
             teacher: Optional[Union[nn.Module, torch.Tensor]] = None, progress: bool = True,
             return_predictions: bool = False) -> Dict[str, float]:
    """Accuracy of ``model`` on labelled batches ``(images, labels)``; labels of -1 count as unlabeled.

    With ``teacher``: also the fraction of images where both predict the same top-1 class
    (``agreement``), which needs no labels. ``teacher`` is a model, or the teacher's top-1 predictions
    for the same loader in the same order (``result['predictions']`` of an earlier call with
    ``return_predictions=True``), which saves running the teacher again for every student.
    """
    model = model.eval().to(device)
    if isinstance(teacher, nn.Module):
        teacher = teacher.eval().to(device)
    n = labelled = top1 = top5 = agree = 0
    predictions = []
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
        if isinstance(teacher, nn.Module):
            agree += (teacher(images).argmax(1) == topk[:, 0]).sum().item()
        elif teacher is not None:
            if len(teacher) < n + len(images):
                raise ValueError(f'Got {len(teacher)} teacher predictions for a loader with more images; pass '
                                 'the predictions made on the same loader.')
            agree += (teacher[n:n + len(images)].to(device) == topk[:, 0]).sum().item()
        predictions.append(topk[:, 0].cpu())
        n += len(images)
    result = {'images': n, 'labelled': labelled}
    if labelled:
        result.update(top1=100.0 * top1 / labelled, top5=100.0 * top5 / labelled)
    if teacher is not None and n:
        if not isinstance(teacher, nn.Module) and len(teacher) != n:
            raise ValueError(f'Got {len(teacher)} teacher predictions for {n} images; pass the predictions made '
                             'on the same loader.')
        result['agreement'] = 100.0 * agree / n
    if return_predictions:
        result['predictions'] = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
    return result
