"""synth: the images the rest of practise-df trains on, for users who have a model and no data.

* BatchNorm-statistic inversion (DeepInversion), resumable and sharded under ``accelerate launch``:
  :func:`synthesize` writes an image folder (one subfolder per class + ``metadata.jsonl``).
* Out-of-domain sources, including crops of a single photo for models without BatchNorm:
  :func:`load_images`.
"""
from .inversion import InversionResult as InversionResult, evaluate_images as evaluate_images
from .inversion import invert_batch as invert_batch
from .losses import BatchNormStatHooks as BatchNormStatHooks, competition_loss as competition_loss
from .ood import HFImageDataset as HFImageDataset, HubUnreachableError as HubUnreachableError
from .ood import SingleImageCrops as SingleImageCrops, load_images as load_images
from .synthesized import SynthesizedImages as SynthesizedImages, read_synth_settings as read_synth_settings
from .presets import PRESETS as PRESETS, InversionConfig as InversionConfig, get_preset as get_preset
from .synthesize import synthesize as synthesize
from .writer import class_to_idx as class_to_idx, merge_metadata as merge_metadata

__all__ = [
    'synthesize', 'invert_batch', 'evaluate_images', 'InversionResult',
    'InversionConfig', 'PRESETS', 'get_preset',
    'BatchNormStatHooks', 'competition_loss',
    'load_images', 'SingleImageCrops', 'HFImageDataset', 'HubUnreachableError',
    'SynthesizedImages', 'read_synth_settings',
    'class_to_idx', 'merge_metadata',
]
