"""Top-1/top-5 accuracy and agreement with a teacher: one tally, used by every evaluation."""
from __future__ import annotations

import logging
import re
from typing import Dict, Iterable, Optional, Union

import torch
import torch.nn as nn
from timm.data import ImageNetInfo, infer_imagenet_subset
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synth import load_images

from ._distributed import gather, sharded_batches, sum_over_processes
from .models import model_device

_logger = logging.getLogger(__name__)
WNID = re.compile(r'n\d{8}')  # an ImageNet (WordNet) class id, the folder names of ImageNet's image folders


def model_num_classes(model: nn.Module, input_size) -> int:
    """How many classes ``model`` predicts: its output width on one blank image, or an exported ONNX file's
    declared output width (the file may take a fixed batch size only)."""
    session = getattr(model, 'session', None)  # practise_df.runtime.OnnxRuntimeModel
    if session is not None and isinstance(session.get_outputs()[0].shape[-1], int):
        return session.get_outputs()[0].shape[-1]
    with torch.no_grad():
        return model.eval()(torch.zeros(1, *input_size, device=model_device(model))).shape[-1]


def match_folder_labels(dataset: Dataset, num_classes: int) -> Optional[str]:
    """Give an image folder's labels the model's class indices, in place. Folders named by ImageNet wnids
    (``n01440764``, any subset of them) map through timm's ImageNet class list; numbered folders already are
    indices; other names count in sorted order when there are as many as the model's classes (torchvision's
    ImageFolder). When none of these holds, the labels cannot be the model's: they are dropped (top-1 is not
    measured, agreement with a teacher still is) and the returned line says why (also logged)."""
    classes, samples = getattr(dataset, 'classes', None), getattr(dataset, 'samples', None)
    if not classes or samples is None or not getattr(dataset, 'labelled', False):
        return None
    numbered = all(c.isdigit() for c in classes)
    if numbered and max(map(int, classes)) < num_classes:
        return None
    if all(WNID.fullmatch(c) for c in classes):
        subset = infer_imagenet_subset({'num_classes': num_classes})
        index = {w: i for i, w in enumerate(ImageNetInfo(subset).label_names())} if subset else {}
        if all(c in index for c in classes):
            dataset.samples = [(path, index[classes[label]] if label >= 0 else label) for path, label in samples]
            return None
    if len(classes) == num_classes and not numbered:  # e.g. a model finetuned on these very folders
        return None
    note = (f"the {len(classes)} class folder(s) of '{getattr(dataset, 'root', 'the data')}' cannot be matched to the "
            f"model's {num_classes} classes (not as many, not numbered class indices, not ImageNet wnids it "
            'predicts): top-1 is not measured, only agreement with a teacher.')
    _logger.warning(note)
    dataset.samples = [(path, -1) for path, _ in samples]
    dataset.labelled = False
    return note


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
             return_predictions: bool = False, teacher_top1: bool = False) -> Dict[str, float]:
    """Accuracy of ``model`` on labelled batches ``(images, labels)``; labels of -1 count as unlabeled.

    With ``teacher``: also the fraction of images where both predict the same top-1 class
    (``agreement``), which needs no labels. ``teacher`` is a model, or the teacher's top-1 predictions
    for the same loader in the same order (``result['predictions']`` of an earlier call with
    ``return_predictions=True``), which saves running the teacher again for every student;
    ``teacher_top1`` adds the teacher's own top-1 on the labelled images.

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
    result = {'images': tally.images, 'labelled': tally.labelled, **tally.result(teacher_top1=teacher_top1)}
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
    note = match_folder_labels(dataset, model_num_classes(model, data_config['input_size']))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    return {**evaluate(model, loader, device, teacher=teacher, progress=progress, teacher_top1=True),
            'skipped_files': getattr(dataset, 'skipped', 0), **({'labels': note} if note else {})}
