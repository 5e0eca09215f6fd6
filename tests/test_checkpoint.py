"""practise_df.checkpoint: compressed-model folders saved, loaded and refused when missing or damaged."""
import json
import os

import pytest
import timm
import torch

from conftest import SMALL, cli, randomize_norms
from practise_df import create_model, drop_blocks, load_compressed, load_model, resolve_data_config, save_compressed
from practise_df.checkpoint import read_config


@pytest.mark.parametrize('spec', ['timm:resnet18', 'torchvision:mobilenet_v2'])
def test_round_trip_is_bit_equal(tmp_path, spec):
    torch.manual_seed(0)
    model = randomize_norms(create_model(spec, num_classes=7))
    blocks = ['layer1.1', 'layer3.1'] if 'resnet' in spec else ['features.5', 'features.12']
    pruned = drop_blocks(model, blocks)
    out = str(tmp_path / 'compressed')
    save_compressed(pruned, out)
    assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
    config = read_config(out)
    assert config['dropped_blocks'] == blocks and config['source']['kwargs'] == {'num_classes': 7}
    loaded = load_compressed(out)
    assert type(loaded) is type(model)
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    # load_model takes a directory wherever a model spec is taken
    again = load_model(out)
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


def test_a_save_never_touches_a_neighbour_named_like_a_temporary(tmp_path, tiny_resnet):
    out = tmp_path / 'm'
    (tmp_path / 'm.tmp').mkdir()  # a folder of the user's that carries the name a save once used
    (tmp_path / 'm.tmp' / 'model.safetensors').write_bytes(b'mine')
    save_compressed(tiny_resnet, str(out))
    assert sorted(os.listdir(tmp_path)) == ['m', 'm.tmp']
    assert (tmp_path / 'm.tmp' / 'model.safetensors').read_bytes() == b'mine'
    assert read_config(str(out))['dropped_blocks'] == []


def test_refuses_to_overwrite_and_rejects_foreign_dirs(tmp_path, tiny_resnet):
    out = str(tmp_path / 'm')
    save_compressed(tiny_resnet, out)
    with pytest.raises(FileExistsError, match='overwrite'):
        save_compressed(tiny_resnet, out)
    save_compressed(drop_blocks(tiny_resnet, ['layer1.1']), out, overwrite=True)
    assert read_config(out)['dropped_blocks'] == ['layer1.1']
    assert os.listdir(tmp_path) == ['m'], 'no temporary or replaced copy left behind'
    with pytest.raises(ValueError, match='carries its own weights'):
        load_model(out, weights='x.pth')
    with pytest.raises(ValueError, match='is a directory, not a model spec'):
        create_model(out)
    other = tmp_path / 'other'
    other.mkdir()
    with pytest.raises(ValueError, match='holds no config.json'):
        load_model(str(other))
    (other / 'config.json').write_text(json.dumps({'format': 'something-else'}))
    with pytest.raises(ValueError, match='not a practise-df compressed model'):
        load_model(str(other))


def test_overwrite_never_replaces_a_folder_or_file_of_the_user(tmp_path, tiny_resnet):
    """overwrite=True replaces a compressed model, never a folder or file that is not one."""
    folder = tmp_path / 'precious'
    folder.mkdir()
    (folder / 'thesis.txt').write_text('years of work')
    with pytest.raises(FileExistsError, match='not a compressed model'):
        save_compressed(tiny_resnet, str(folder), overwrite=True)
    assert (folder / 'thesis.txt').read_text() == 'years of work' and os.listdir(folder) == ['thesis.txt']
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('mine')
    with pytest.raises(FileExistsError, match='is a file'):
        save_compressed(tiny_resnet, str(a_file), overwrite=True)
    assert a_file.read_text() == 'mine' and not os.path.exists(str(a_file) + '.old')


def test_saved_files_follow_the_umask(tmp_path, tiny_resnet):
    old = os.umask(0o022)
    try:
        save_compressed(tiny_resnet, str(tmp_path / 'm'))
    finally:
        os.umask(old)
    modes = {f: os.stat(tmp_path / 'm' / f).st_mode & 0o777 for f in ('model.safetensors', 'config.json')}
    assert modes == {'model.safetensors': 0o644, 'config.json': 0o644}


def test_data_config_travels_with_the_model(tmp_path, tiny_resnet):
    out = str(tmp_path / 'm')
    save_compressed(tiny_resnet, out, data_config={'input_size': (3, 96, 96), 'interpolation': 'bicubic',
                                                   'mean': (0.5,) * 3, 'std': (0.5,) * 3, 'crop_pct': 1.0,
                                                   'crop_mode': 'center'})
    from practise_df import resolve_data_config
    cfg = resolve_data_config(load_compressed(out))
    assert cfg['input_size'] == (3, 96, 96) and cfg['mean'] == (0.5, 0.5, 0.5)
    # timm's own resolver (what synth.synthesize uses when given no data config) sees it too
    assert timm.data.resolve_model_data_config(load_compressed(out)) == cfg


def test_a_folder_written_before_provenance_was_an_object_loads(tmp_path):
    """issue 30: the provenance is one object now; a folder whose config.json today's format 1 wrote (these exact
    keys, as practise-df 0.2.0 wrote them) loads as the same model."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    teacher = randomize_norms(create_model('timm:test_convnext', num_classes=5))
    student = drop_blocks(teacher, ['stages.2.blocks.1'])
    folder = tmp_path / 'old'
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(folder / 'model.safetensors'),
              metadata={'format': 'practise-df-compressed'})
    (folder / 'config.json').write_text(json.dumps({
        'format': 'practise-df-compressed', 'format_version': 1,
        'source': {'model': 'timm:test_convnext', 'kwargs': {'num_classes': 5}},
        'dropped_blocks': ['stages.2.blocks.1'],
        'data_config': {'input_size': [3, 64, 64], 'interpolation': 'bicubic', 'mean': [0.5, 0.5, 0.5],
                        'std': [0.5, 0.5, 0.5], 'crop_pct': 0.9, 'crop_mode': 'center'},
        'stage': 'blocks dropped, before finetuning'}, indent=2))
    loaded = load_compressed(str(folder))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), student.eval()(x))
    from practise_df.checkpoint import read_provenance
    provenance = read_provenance(str(folder))
    assert provenance.dropped_blocks == ('stages.2.blocks.1',) and provenance.source['kwargs'] == {'num_classes': 5}
    assert resolve_data_config(loaded)['input_size'] == (3, 64, 64)


def test_the_provenance_given_is_what_is_saved_not_what_the_module_carries(tmp_path):
    """issue 30: save_compressed read the source and the dropped blocks off attributes of the module, which a
    wrapper or a rebuilt copy does not carry; given explicitly, the provenance is all it needs."""
    from practise_df.checkpoint import Provenance, read_provenance
    torch.manual_seed(0)
    teacher = create_model('timm:test_convnext', num_classes=5)
    provenance = Provenance.of(teacher, {'input_size': (3, 64, 64)}).dropping(['stages.3.blocks.0'])
    student = drop_blocks(teacher, ['stages.3.blocks.0'])
    bare = student
    for name in ('practise_df_source', 'practise_df_dropped'):  # what a wrapper or a copy of the module loses
        bare.__dict__.pop(name, None)
    bare.pretrained_cfg = {}
    with pytest.raises(ValueError, match='cannot be recorded|does not give this model'):
        save_compressed(bare, str(tmp_path / 'guessed'))
    out = save_compressed(bare, str(tmp_path / 'given'), provenance=provenance)
    assert read_provenance(out) == Provenance(provenance.source, ('stages.3.blocks.0',),
                                              {'input_size': [3, 64, 64]})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_compressed(out)(x), student.eval()(x))


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
def test_a_truncated_compressed_model_is_one_clear_line(capsys, images, tmp_path):
    model = str(tmp_path / 'model')
    save_compressed(create_model('timm:resnet18', num_classes=4), model)
    weights = os.path.join(model, 'model.safetensors')
    open(weights, 'r+b').truncate(os.path.getsize(weights) // 2)
    code, _, err = cli(capsys, 'eval', '--model', model, '--data', images)
    assert code == 2 and 'damaged' in err and 'model.safetensors' in err


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
def test_a_model_folder_that_does_not_exist_is_named_as_missing(capsys, images, tmp_path):
    code, _, err = cli(capsys, 'eval', '--model', tmp_path / 'out' / 'm5dir', '--data', images)
    assert code == 2 and f"'{tmp_path / 'out' / 'm5dir'}' does not exist" in err and 'Unknown timm' not in err
