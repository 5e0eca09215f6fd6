"""practise_df.evaluate's labels (issue 28): ImageNet wnid folders get the model's class indices, and folders
that cannot be the model's classes give agreement with the teacher only, never a top-1 scored as if they were."""
import json
import os
import shutil

import timm
import torch

from conftest import MODEL, cli, make_image_folder
from practise_df import create_model, resolve_data_config
from synth.data import ImageFolderDataset, eval_transform


# Issue 28: labels that cannot be the model's are never scored as if they were.
def test_imagenet_wnid_folders_are_labelled_with_the_models_class_indices(capsys, tmp_path):
    model = create_model('timm:resnet18')  # 1000 ImageNet classes, random weights saved so eval rebuilds them
    torch.save(model.state_dict(), tmp_path / 'w.pth')
    flat = make_image_folder(str(tmp_path / 'flat'), classes=(), flat=6, size=40)
    dataset = ImageFolderDataset(flat, eval_transform(resolve_data_config(model, input_size=32)))
    with torch.no_grad():
        predicted = model(torch.stack([dataset[i][0] for i in range(len(dataset))])).argmax(1).tolist()
    wnids = timm.data.ImageNetInfo('imagenet-1k').label_names()
    for (path, _), label in zip(dataset.samples, predicted):  # each image in the folder of the class predicted
        os.makedirs(tmp_path / 'subset' / wnids[label], exist_ok=True)
        shutil.copy(path, tmp_path / 'subset' / wnids[label])
    code, out, err = cli(capsys, 'eval', *MODEL, '--weights', tmp_path / 'w.pth', '--data', tmp_path / 'subset',
                         '--repeats', 1, '--batch-size', 2, '--json')
    assert code == 0, err
    assert json.loads(out)['top1'] == 100.0  # by sorted folder index it would be ~0


# Issue 28: labels that cannot be the model's are never scored as if they were.
def test_folders_that_cannot_be_the_models_classes_give_agreement_only(capsys, caplog, tmp_path):
    images = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b'), per_class=2, size=40)
    argv = ['eval', *MODEL, '--weights', 'random', '--data', images, '--repeats', 1, '--batch-size', 2,
            '--teacher', 'timm:resnet18', '--teacher-weights', 'random', '--json']
    code, out, err = cli(capsys, *argv)  # 2 class folders a and b, a 1000-class model
    result = json.loads(out)
    assert code == 0 and 'top1' not in result and 'agreement' in result
    said = [r.message for r in caplog.records if 'cannot be matched to the model' in r.message]
    assert len(said) == 1 and 'the 2 class folder(s)' in result['labels']
