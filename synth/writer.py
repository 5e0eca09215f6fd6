"""The on-disk layout of a synthesised set, written so an interrupted run can resume.

    out_dir/
        0000/00000000.png          one subfolder per class: zero-padded class index (sorted = index order)
        0001/00000001.png          file name = global image index, so a redone batch overwrites, never adds
        metadata-rank0.jsonl       appended after each finished batch by the process that made it
        metadata.jsonl             merged by the main process at the end (Hugging Face imagefolder reads it)
        synth_config.json          the settings; resuming with other settings is refused

Images are written to a temporary name and renamed, so a crash never leaves a half-written PNG, and a
batch counts as done only once its metadata lines are on disk.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Dict, Iterable, List, Optional

import torch
from PIL import Image

from practise_io import append_jsonl, drop_partial_line, replacing, write_text_atomic

__all__ = ['ShardWriter', 'image_name', 'read_records', 'merge_metadata', 'class_to_idx']

_logger = logging.getLogger(__name__)

METADATA = 'metadata.jsonl'
SHARD_PATTERN = 'metadata-rank{rank}.jsonl'
CONFIG = 'synth_config.json'


def image_name(index: int, target: int, class_width: int = 4) -> str:
    """Path of image ``index`` relative to the output folder (the ``file_name`` column)."""
    return f'{target:0{class_width}d}/{index:08d}.png'


def class_to_idx(out_dir: str) -> Dict[str, int]:
    """Class-folder name -> class index of a synthesised set, for
    ``synth.data.ImageFolderDataset(out_dir, class_to_idx=...)`` when not every class is present
    (with all classes present, sorted folder order already equals the class index)."""
    return {d: int(d) for d in sorted(os.listdir(out_dir))
            if d.isdigit() and os.path.isdir(os.path.join(out_dir, d))}


class ShardWriter:
    """Writes the images and metadata lines of one process (``rank``); no two ranks share a file."""

    def __init__(self, out_dir: str, rank: int = 0, class_width: int = 4):
        self.out_dir = out_dir
        self.class_width = class_width
        self.metadata_path = os.path.join(out_dir, SHARD_PATTERN.format(rank=rank))
        os.makedirs(out_dir, exist_ok=True)
        drop_partial_line(self.metadata_path)

    def write_batch(self, pixels: torch.Tensor, records: List[dict]) -> None:
        """Save ``pixels`` (B, C, H, W uint8) as PNGs named by ``records[i]['file_name']``, then append
        the records. Only the append marks the batch as done."""
        array = pixels.permute(0, 2, 3, 1).cpu().numpy()
        if array.shape[-1] == 1:
            array = array[..., 0]
        for image, record in zip(array, records):
            path = os.path.join(self.out_dir, record['file_name'])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with replacing(path, owned=True) as tmp:  # a PNG is whole or absent
                Image.fromarray(image).save(tmp, format='PNG')
        append_jsonl(self.metadata_path, records)


def _iter_lines(path: str) -> Iterable[dict]:
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                _logger.warning("Ignored malformed metadata line %d of '%s'.", n, path)


def read_records(out_dir: str) -> List[dict]:
    """Records of every rank's metadata whose image exists, one per image (sorted by index)."""
    records: Dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(out_dir, SHARD_PATTERN.format(rank='*')))):
        for r in _iter_lines(path):
            if os.path.isfile(os.path.join(out_dir, r['file_name'])):
                records[r['index']] = r  # a redone batch repeats its lines: keep one
    return [records[i] for i in sorted(records)]


def merge_metadata(out_dir: str, num_images: Optional[int] = None) -> List[dict]:
    """Write ``metadata.jsonl`` from the rank files (main process only, after every rank finished).
    With ``num_images``, records beyond it (from an earlier, larger run) are left out."""
    records = read_records(out_dir)
    if num_images is not None:
        records = [r for r in records if r['index'] < num_images]
    write_text_atomic(os.path.join(out_dir, METADATA), ''.join(json.dumps(r) + '\n' for r in records))
    return records
