"""The report of one compression run: what :func:`practise_df.compress` returns, what ``report.json`` holds
(:meth:`Report.to_dict`, the keys every version wrote) and what the CLI and the model card render.

The measurements inside (latency, evaluation, export, guard, robustness) stay mappings with the keys their
producers write (:mod:`practise_df.latency`, :mod:`practise_df.evaluate`, ...); the report names them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

OPTIONAL = ('eval', 'export', 'guard', 'recovery', 'robustness')  # in report.json only when measured


@dataclass
class Report:
    model: str  # the teacher's spec (or the name given with a teacher built in code)
    dropped_blocks: List[str]
    latency: Dict[str, Any]  # teacher_ms, student_ms, saved_pct and its interval, device, batch_size, ...
    params: Dict[str, int]  # {'teacher': n, 'student': n}
    macs: Dict[str, int]
    finetune: Dict[str, Any]  # loss, steps, freeze_bn, mix, final_loss
    weights: Optional[str] = None
    image_source: str = 'synthesized'  # the --images source, or 'synthesized'
    skipped_files: int = 0  # --images files that did not decode
    adaptors: bool = True  # adaptors fitted and folded (older reports: always)
    scores: List[Dict[str, Any]] = field(default_factory=list)  # every candidate's BlockScore, lowest first
    # --latency-reduction: the whole student timed after each block added (blocks, saving, its interval, runs)
    selection_steps: List[Dict[str, Any]] = field(default_factory=list)
    compressed_model: Optional[str] = None  # the folder of the kept student
    heldout_agreement: Optional[float] = None  # top-1 agreement with the teacher on the held-out images
    eval: Optional[Dict[str, Any]] = None  # --eval-data: teacher, student and the other students
    export: Optional[Dict[str, Any]] = None  # --export: the deployable file and its latency
    guard: Optional[Dict[str, Any]] = None  # which student the guard kept, and why
    recovery: Optional[Dict[str, Any]] = None  # every recovery candidate, its signal, and which was kept
    robustness: Optional[Dict[str, Any]] = None  # --robustness

    def to_dict(self) -> Dict[str, Any]:
        """``report.json``: every field, the optional measurements only when there are any (JSON values)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.loads(json.dumps({k: v for k, v in data.items() if not (k in OPTIONAL and v is None)}))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> 'Report':
        """From ``report.json`` (of this or an older version); unknown keys are refused by name."""
        data = dict(data)
        if 'images' in data:  # reports before issue 30 named the image source 'images'
            data.setdefault('image_source', data.pop('images'))
        for key in ('recovery', 'guard'):  # ... and the recovery signal's image source 'images' too
            if isinstance((data.get(key) or {}).get('images'), str):
                data[key] = {('image_source' if k == 'images' else k): v for k, v in data[key].items()}
        if 'iterations' in data.get('finetune', {}):  # ... and finetuning's steps 'iterations'
            finetune = dict(data['finetune'])
            finetune.setdefault('steps', finetune.pop('iterations'))
            data['finetune'] = finetune
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ValueError(f"Not a practise-df report: unknown key(s) {', '.join(unknown)}.")
        return cls(**data)

    @classmethod
    def empty(cls) -> 'Report':
        """What the processes other than the main one return (the main one writes and renders the report)."""
        return cls('', [], {}, {}, {}, {})

    def __bool__(self) -> bool:
        return bool(self.model)

    # Read as the mapping report.json holds, for code written against the dict compress returned before:
    # each access converts only the field asked for.
    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return json.loads(json.dumps(getattr(self, key)))

    def __contains__(self, key: str) -> bool:
        return key in _FIELDS and not (key in OPTIONAL and getattr(self, key) is None)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


_FIELDS = frozenset(f.name for f in dataclasses.fields(Report))
