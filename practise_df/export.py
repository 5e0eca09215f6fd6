"""Export a teacher or a compressed student for deployment, checked against PyTorch before it is written.

Two formats: ``onnx`` (torch.onnx's dynamo exporter, run with ONNX Runtime) and ``torch-export`` (a
``torch.export`` program saved as ``.pt2``). The file carries what a deployment needs to feed it:
input size, mean, std, interpolation, crop and class count, in the ONNX ``metadata_props`` (ONNX
Runtime reads them as ``session.get_modelmeta().custom_metadata_map``) or as a JSON file inside the
``.pt2`` archive. :func:`read_metadata` returns them for either.

A file is only written after the exported model matched PyTorch on random inputs (and on images
when given): max absolute logit difference at most ``atol`` and the same top-1 class everywhere.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from synth.data import image_loader
from synth.ood import photo_crops

from .blocks import dropped_blocks
from .models import PREPROCESSING, model_device, resolve_data_config
from .runtime import OnnxRuntimeModel, require_deploy

FORMATS = ('onnx', 'torch-export')
QUANTIZATIONS = ('int8',)
CALIBRATION_IMAGES = 64
# The lowest opset torch's exporter implements. It "converts" lower requests after exporting at 18 and,
# when that fails (it does for ResNets), silently keeps 18, so lower opsets are refused up front.
MIN_OPSET = 18
ATOL = 1e-3
INPUT_NAME, OUTPUT_NAME = 'input', 'logits'
TORCH_EXPORT_METADATA = 'practise_df_metadata.json'  # extra file inside the .pt2 archive
PREPROCESSING_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def export_metadata(model: nn.Module, data_config: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    """What a deployment needs to feed the exported model, and where it came from."""
    source = getattr(model, 'practise_df_source', None) or {}
    meta: Dict[str, Any] = {'input_name': INPUT_NAME, 'output_name': OUTPUT_NAME,
                            'input_layout': 'NCHW, RGB scaled to [0, 1], then (x - mean) / std'}
    meta.update({k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()
                 if k in PREPROCESSING_KEYS})
    meta.update(num_classes=num_classes, source_model=source.get('model', type(model).__name__),
                dropped_blocks=dropped_blocks(model), producer='practise-df')
    return meta


def _encode(meta: Dict[str, Any]) -> Dict[str, str]:
    """ONNX metadata values are strings: plain strings stay readable, everything else is JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def check_opset(opset: Optional[int]) -> None:
    """Refuse an opset the exporter cannot write, before spending time on the export."""
    if opset is None:
        return
    onnx = require_deploy('onnx')
    highest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise ValueError(f"Cannot export ONNX opset {opset}: torch's ONNX exporter writes opsets {MIN_OPSET} to "
                         f"{highest} (onnx {onnx.__version__}) and cannot convert a model to a lower one. Pass "
                         f"--opset between {MIN_OPSET} and {highest}, or leave it out for the exporter's default.")


def _example_and_shapes(model: nn.Module, input_size: Sequence[int], batch_size: int, dynamic_batch: bool):
    # torch.export specialises a dimension of size 1, so a dynamic batch is traced with at least 2.
    batch = max(batch_size, 2) if dynamic_batch else batch_size
    x = torch.randn(batch, *input_size, device=model_device(model))
    return x, (({0: torch.export.Dim('batch')},) if dynamic_batch else None)


def export_onnx(model: nn.Module, path: str, input_size: Sequence[int], batch_size: int = 1,
                dynamic_batch: bool = False, opset: Optional[int] = None,
                metadata: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model`` to ``path`` as ONNX (torch.onnx, dynamo exporter), with ``metadata`` in its
    ``metadata_props``. No check against PyTorch: :func:`export_model` does that."""
    require_deploy('onnx')
    require_deploy('onnxscript', 'torch.onnx.export (the dynamo exporter)')
    check_opset(opset)
    x, dynamic_shapes = _example_and_shapes(model, input_size, batch_size, dynamic_batch)
    try:
        program = torch.onnx.export(model.eval(), (x,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes,
                                    opset_version=opset, verbose=False)
    except Exception as e:  # torch.export's and the translator's many error types
        raise ValueError(f'torch.onnx.export could not export {type(model).__name__}: {e}') from e
    written = program.model.opset_imports.get('')
    if opset is not None and written != opset:
        raise ValueError(f'Asked for ONNX opset {opset} but the exporter wrote opset {written}; pass --opset {written} '
                         'or leave it out.')
    program.model.metadata_props.update(_encode(metadata or {}))
    program.save(path)  # one file; weights go to a side file only past protobuf's 2 GB limit
    return path


def export_torch(model: nn.Module, path: str, input_size: Sequence[int], batch_size: int = 1,
                 dynamic_batch: bool = False, metadata: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model`` to ``path`` as a ``torch.export`` program (``.pt2``) with ``metadata`` inside."""
    x, dynamic_shapes = _example_and_shapes(model, input_size, batch_size, dynamic_batch)
    try:
        program = torch.export.export(model.eval(), (x,), dynamic_shapes=dynamic_shapes)
    except Exception as e:
        raise ValueError(f'torch.export could not export {type(model).__name__}: {e}') from e
    torch.export.save(program, path, extra_files={TORCH_EXPORT_METADATA: json.dumps(metadata or {})})
    return path


def _is_torch_export(path: str) -> bool:
    return zipfile.is_zipfile(path)  # .pt2 archives are zip files; ONNX files are protobuf


EXPORTED_SUFFIXES = ('.onnx', '.pt2')


def is_exported_file(path: str) -> bool:
    return path.endswith(EXPORTED_SUFFIXES) and os.path.isfile(path)


def load_exported(path: str, device: str = 'cpu', threads: Optional[int] = None) -> nn.Module:
    """An exported file as a callable module: ONNX through ONNX Runtime (see
    :class:`~practise_df.runtime.OnnxRuntimeModel`), ``.pt2`` through ``torch.export.load``. The
    preprocessing in the file's metadata becomes the module's ``pretrained_cfg``, so
    :func:`~practise_df.models.resolve_data_config` reads it as it does for a timm model."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' does not exist.")
    module = torch.export.load(path).module() if _is_torch_export(path) else \
        OnnxRuntimeModel(path, device=device, threads=threads)
    meta = read_metadata(path)
    keys = (*PREPROCESSING, 'crop_mode')
    module.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.items() if k in keys}
    return module


def read_metadata(path: str) -> Dict[str, Any]:
    """The preprocessing and provenance an exported file carries (``{}`` for a file exported elsewhere)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' does not exist.")
    if _is_torch_export(path):
        extra = {TORCH_EXPORT_METADATA: ''}
        torch.export.load(path, extra_files=extra)
        return json.loads(extra[TORCH_EXPORT_METADATA] or '{}')
    onnx = require_deploy('onnx')
    proto = onnx.load(path, load_external_data=False)
    return {p.key: _decode(p.value) for p in proto.metadata_props}


def compare_outputs(reference: nn.Module, exported: nn.Module,
                    batches: Iterable[Tuple[torch.Tensor, int]]) -> Dict[str, Any]:
    """Largest absolute logit difference and top-1 disagreements of two models on ``(batch, keep)``
    pairs; only the first ``keep`` rows of a batch count (the rest pad a static batch)."""
    device = model_device(reference)
    worst, images, mismatched, sizes = 0.0, 0, 0, set()
    with torch.inference_mode():
        for x, keep in batches:
            x = x.to(device)
            a, b = reference(x)[:keep].float(), exported(x)[:keep].float().to(device)
            worst = max(worst, (a - b).abs().max().item())
            mismatched += (a.argmax(1) != b.argmax(1)).sum().item()
            images += keep
            sizes.add(len(x))
    return {'images': images, 'batch_sizes': sorted(sizes), 'max_abs_diff': worst, 'top1_mismatches': mismatched}


def _image_batches(loader, batch_size: int, dynamic_batch: bool) -> Iterator[Tuple[torch.Tensor, int]]:
    """The images in batches the exported graph takes: its batch size, or 32 at a time for any batch."""
    for x, _ in loader:
        keep = len(x)
        if not dynamic_batch and keep < batch_size:  # a static graph takes only full batches: pad the last
            x = torch.cat([x, x.new_zeros(batch_size - keep, *x.shape[1:])])
        yield x, keep


def _check(checks: Dict[str, dict], atol: float, fmt: str, output: str) -> None:
    for where, c in checks.items():
        if c['max_abs_diff'] > atol or c['top1_mismatches']:
            raise ValueError(
                f"The exported {fmt} model does not match PyTorch on {c['images']} {where} input(s): max |logit "
                f"difference| {c['max_abs_diff']:.3g} (allowed {atol:g}), top-1 differs on {c['top1_mismatches']}. "
                f"Nothing was written to '{output}'.")


def calibration_images(data_config: Dict[str, Any], source: Optional[str] = None,
                       num_images: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """Images that set the int8 activation ranges: ``num_images`` from an image folder, or by default crops
    of natural photos (the guard's scikit-image sample photos: no data of the user's is needed)."""
    if source is None:
        return photo_crops(data_config, num_images=num_images, seed=seed)
    images = [x for x, _ in image_loader(source, data_config, batch_size=num_images, max_images=num_images, seed=seed)]
    return torch.cat(images)[:num_images]


def quantize_onnx(src: str, dst: str, images: torch.Tensor, batch_size: int = 1, dynamic_batch: bool = False,
                  metadata: Optional[Dict[str, Any]] = None) -> str:
    """``src`` quantized to int8 by ONNX Runtime's static quantizer (QDQ format, per-channel int8 weights,
    uint8 activations with ranges calibrated on ``images``), written to ``dst`` with ``metadata`` (default:
    ``src``'s)."""
    onnx = require_deploy('onnx')
    quantization = require_deploy('onnxruntime.quantization', 'int8 quantization')
    from onnxruntime.quantization.shape_inference import quant_pre_process

    step = 8 if dynamic_batch else batch_size  # a static graph takes only its own batch size
    batches = [b for b in images.split(step) if len(b) == step] or [images[:step]]
    if len(batches[0]) < step:
        raise ValueError(f'int8 calibration needs at least {step} images (one calibration batch); got {len(images)}.')

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{INPUT_NAME: b.numpy()} for b in batches])

        def get_next(self):
            return next(self.feeds, None)

    prepared = dst + '.prep.onnx'
    try:
        quant_pre_process(src, prepared, skip_symbolic_shape=True)  # fold and infer shapes, as ORT recommends
    except Exception:  # pre-processing only improves the result; the quantizer works without it
        shutil.copyfile(src, prepared)
    try:
        quantization.quantize_static(prepared, dst, Reader(), quant_format=quantization.QuantFormat.QDQ,
                                     per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                     weight_type=quantization.QuantType.QInt8)
    finally:
        if os.path.exists(prepared):
            os.remove(prepared)
    model = onnx.load(dst)  # the float model's metadata, replaced as a whole
    onnx.helper.set_model_props(model, _encode(metadata) if metadata is not None else
                                {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props})
    onnx.save(model, dst)
    return dst


def export_model(model: nn.Module, output: str, format: str = 'onnx', *, data_config: Optional[dict] = None,
                 input_size: Optional[int] = None, batch_size: int = 1, dynamic_batch: bool = False,
                 opset: Optional[int] = None, data: Optional[str] = None, max_images: Optional[int] = None,
                 atol: float = ATOL, device: str = 'cpu', overwrite: bool = False, seed: int = 0,
                 quantize: Optional[str] = None, calibration: Optional[str] = None,
                 num_calibration: int = CALIBRATION_IMAGES) -> Dict[str, Any]:
    """Export ``model`` to ``output`` and check it against PyTorch; returns what was written and checked.

    Args:
        model: a teacher or compressed student (e.g. from :func:`practise_df.load_compressed`).
        format: ``'onnx'`` or ``'torch-export'``.
        data_config: preprocessing to record and feed ``data`` with; when None, the model's (see
            :func:`~practise_df.models.resolve_data_config`) with ``input_size`` (an int) as override.
        batch_size: the batch the graph is exported for; ``dynamic_batch`` makes it any batch.
        opset: ONNX opset (default: the exporter's).
        data: an image folder to check on as well as random inputs; ``max_images`` caps it.
        atol: the largest absolute logit difference allowed; the top-1 class must also match.
        device: where ONNX Runtime runs the check ('cpu' or 'cuda').
        quantize: ``'int8'``: ONNX only, quantized by ONNX Runtime's static quantizer after the float export
            matched PyTorch (see :func:`quantize_onnx`). The int8 model is compared with PyTorch the same way
            and its differences are reported, not refused: quantization changes logits by design, so measure
            its accuracy (``practise-df eval`` takes no ONNX file; ``load_exported`` + ``evaluate`` do).
        calibration: image folder whose first ``num_calibration`` images set the int8 ranges (default:
            crops of natural sample photos, :func:`calibration_images`).

    Raises:
        ValueError: unknown format, refused opset, a model the exporter cannot trace, or an exported model
            that does not match PyTorch (then nothing is written).
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format '{format}'; choose from {', '.join(FORMATS)}.")
    if opset is not None and format != 'onnx':
        raise ValueError(f"--opset applies to ONNX only, not to format '{format}'.")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization '{quantize}'; choose from {', '.join(QUANTIZATIONS)}.")
    if quantize is not None and format != 'onnx':
        raise ValueError(f"--quantize {quantize} is done by ONNX Runtime: use --format onnx, not '{format}'.")
    if batch_size < 1:
        raise ValueError('batch_size must be at least 1.')
    check_opset(opset)
    if not atol >= 0:
        raise ValueError(f'atol is the largest logit difference allowed, at least 0; got {atol}.')
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"'{output}' already exists. Choose another file or pass overwrite=True (--overwrite).")
    config = data_config or resolve_data_config(model, input_size=input_size)
    shape = tuple(config['input_size'])
    model = model.eval()
    gen = torch.Generator().manual_seed(seed)
    sizes = [batch_size] + ([1, batch_size + 2] if dynamic_batch else [])
    random_batches = [(torch.randn(b, *shape, generator=gen), b) for b in sizes]
    with torch.inference_mode():
        num_classes = model(random_batches[0][0][:1].to(model_device(model))).shape[-1]
    metadata = export_metadata(model, config, num_classes)
    loader = image_loader(data, config, batch_size=max(batch_size, 32) if dynamic_batch else batch_size,
                          max_images=max_images, seed=seed) if data else None  # a bad folder fails before export

    def check_against_pytorch(path: str) -> Dict[str, dict]:
        """The exported file against PyTorch on the random batches, and on ``data`` when given."""
        exported = load_exported(path, device=device)
        checks = {'random': compare_outputs(model, exported, random_batches)}
        if data:
            checks['image'] = compare_outputs(model, exported, _image_batches(loader, batch_size, dynamic_batch))
        return checks

    target_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(target_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix='.practise-df-export-', dir=target_dir)  # same file names, same disk
    tmp = os.path.join(tmp_dir, os.path.basename(output))
    try:
        if format == 'onnx':
            export_onnx(model, tmp, shape, batch_size, dynamic_batch, opset, metadata)
        else:
            export_torch(model, tmp, shape, batch_size, dynamic_batch, metadata)
        checks = check_against_pytorch(tmp)
        _check(checks, atol, format, output)
        if quantize:
            source = calibration or 'natural sample photos (scikit-image)'
            metadata['quantization'] = f'{quantize}: ONNX Runtime static QDQ, per-channel weights, calibrated on ' \
                                       f'{num_calibration} images of {source}'
            program = tmp + '.float.onnx'
            os.replace(tmp, program)
            quantize_onnx(program, tmp, calibration_images(config, calibration, num_calibration, seed), batch_size,
                          dynamic_batch, metadata)
            os.remove(program)
            checks = check_against_pytorch(tmp)  # reported, not refused: int8 changes logits by design
        for name in os.listdir(tmp_dir):  # the model (and an external-data file, if any) move in together
            os.replace(os.path.join(tmp_dir, name), os.path.join(target_dir, name))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    result = {'output': output, 'format': format, 'input_size': list(shape), 'batch_size': batch_size,
              'dynamic_batch': dynamic_batch, 'atol': atol, 'checks': checks, 'metadata': metadata,
              'quantize': quantize, 'bytes': os.path.getsize(output)}
    if format == 'onnx':
        result['opset'] = _opset(output)
    return result


def _opset(path: str) -> int:
    onnx = require_deploy('onnx')
    proto = onnx.load(path, load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))


def onnxruntime_models(models: Sequence[nn.Module], input_size: Sequence[int], batch_size: int = 1,
                       device: str = 'cpu', threads: Optional[int] = None) -> List[OnnxRuntimeModel]:
    """Each model exported to ONNX for a fixed batch and loaded into an ONNX Runtime session (models that
    already are sessions are kept). What :func:`practise_df.latency.measure_latencies` times for
    ``runtime='onnxruntime'``."""
    with tempfile.TemporaryDirectory(prefix='practise-df-ort-') as tmp:  # each session holds its graph
        return [m if isinstance(m, OnnxRuntimeModel) else
                OnnxRuntimeModel(export_onnx(m, os.path.join(tmp, f'{i}.onnx'), input_size, batch_size),
                                 device=device, threads=threads)
                for i, m in enumerate(models)]
