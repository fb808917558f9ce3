"""Released checkpoints (strict loading, listing errors, export round trip) and our own checkpoints."""
from pathlib import Path
import pytest
import torch

from sdaanet.core import ModelConfig, model_config
from sdaanet.model import SDAANet
from sdaanet.checkpoints import (CheckpointMismatchError, export_official, load_checkpoint, load_official_checkpoint,
                                 official_config, save_checkpoint, state_dict_from_spec)

SPEC = Path(__file__).parent / 'data' / 'official-sdaanet-resnet50-state-dict.tsv'


@pytest.fixture(scope='module')
def released():
    return {'epoch': 123, 'state_dict': state_dict_from_spec(SPEC, seed=1), 'optimizer': {}}


def test_spec_checkpoint_loads_strictly_and_predicts(released, make_episode):
    model = load_official_checkpoint(released, shots=5).eval()
    assert (model.cfg.backbone, model.cfg.variant, model.cfg.use_sdpm, model.cfg.use_saam) == \
        ('resnet50', 'official', True, True)
    assert len(model.state_dict()) == 393
    # every released tensor is in the model unchanged
    exported = export_official(model)['state_dict']
    assert exported.keys() == released['state_dict'].keys()
    assert all(torch.equal(exported[k], v) for k, v in released['state_dict'].items())
    q, s, sm, _ = make_episode(K=5, H=65)
    with torch.no_grad():
        logits = model(q, s, sm)['logits']                      # no query mask
    assert logits.shape == (1, 2, 65, 65) and torch.isfinite(logits).all()


def test_released_checkpoint_from_file(released, tmp_path):
    path = tmp_path / 'train_epoch_200.pth'
    torch.save(released, path)
    model = load_official_checkpoint(path)
    assert model.cfg.backbone == 'resnet50'


@pytest.mark.parametrize('change,expect', [
    (lambda sd: sd.pop('module.cls.3.bias'), r'missing keys \(1\):\s+cls\.3\.bias'),
    (lambda sd: sd.__setitem__('module.extra.weight', torch.zeros(1)), r'unexpected keys \(1\):\s+extra\.weight'),
    (lambda sd: sd.__setitem__('module.res1.0.weight', torch.zeros(256, 1000, 1, 1)),
     r'mis-shaped keys \(1\):\s+res1\.0\.weight: checkpoint \(256, 1000, 1, 1\), model \(256, 1024, 1, 1\)'),
])
def test_mismatch_lists_keys(released, change, expect):
    sd = dict(released['state_dict'])
    change(sd)
    with pytest.raises(CheckpointMismatchError, match=expect):
        load_official_checkpoint({'state_dict': sd})


def test_mismatch_into_given_model(released):
    model = SDAANet(ModelConfig(backbone_weights=None, use_sdpm=False))
    with pytest.raises(CheckpointMismatchError, match=r'unexpected keys \(4\):\s+se_supp\.0\.weight'):
        load_official_checkpoint(released, model=model)


def test_config_inference():
    sd = {k: v for k, v in export_official(SDAANet(ModelConfig(backbone='resnet101', backbone_weights=None,
                                                                use_sdpm=False)))['state_dict'].items()}
    sd = {k[len('module.'):]: v for k, v in sd.items()}
    cfg = official_config(sd)
    assert (cfg.backbone, cfg.use_sdpm, cfg.use_saam) == ('resnet101', False, True)
    eff = {k[len('module.'):]: v for k, v in
           export_official(SDAANet(model_config('embedded', backbone_weights=None)))['state_dict'].items()}
    with pytest.raises(CheckpointMismatchError, match='pass backbone='):
        official_config(eff)


@pytest.mark.parametrize('preset', ['pascal', 'embedded'])
def test_save_export_load_round_trip_is_exact(preset, tmp_path, make_episode):
    torch.manual_seed(0)
    model = SDAANet(model_config(preset, backbone_weights=None, backbone_bn='train')).train()
    model(*make_episode(B=2, H=65))                      # move BN statistics, backbone's included
    path = save_checkpoint(tmp_path / 'ckpt.pth', model, iteration=7)
    loaded, ckpt = load_checkpoint(path)
    assert ckpt['iteration'] == 7 and loaded.cfg == model.cfg
    released = export_official(loaded, epoch=3)
    back = load_official_checkpoint(released, model=SDAANet(loaded.cfg.replace(backbone_weights=None)))
    for a, b in ((model, loaded), (model, back)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    q, s, sm, _ = make_episode(H=65)
    model.eval(); back.eval()
    with torch.no_grad():
        assert torch.equal(model(q, s, sm)['logits'], back(q, s, sm)['logits'])


def test_our_checkpoint_errors(tmp_path, released):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint(tmp_path / 'nope.pth')
    path = tmp_path / 'released.pth'
    torch.save(released, path)
    with pytest.raises(ValueError, match='use load_official_checkpoint'):
        load_checkpoint(path)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model = SDAANet(model_config('embedded', backbone_weights=None))
    path = save_checkpoint(tmp_path / 'a.pth', model)
    good = path.read_bytes()

    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(path, model)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ['a.pth']


@pytest.mark.parametrize('size,cells', [(473, (60, 30, 15, 7)), (321, (41, 20, 10, 5))])
def test_resnet101_released_checkpoint_gets_the_coco_decoder(size, cells):
    "A released ResNet-101 (COCO) checkpoint loads with the COCO configuration's decoder shares, pooled as released."
    from sdaanet.modules import bin_size
    coco = SDAANet(ModelConfig(backbone='resnet101', backbone_weights=None))
    model = load_official_checkpoint(export_official(coco))
    assert model.cfg.decoder_bins == (1.0, 0.5, 0.25, 0.125)
    feat = model.encode_query(torch.zeros(1, 3, size, size))[0].shape[-1]   # the stride-8 map the decoder pools
    assert tuple(bin_size(b, feat) for b in model.decoder.bins) == cells
    assert load_official_checkpoint(export_official(coco), dataset='pascal').cfg.decoder_bins == (60, 30, 15, 8)


def test_resnet50_released_checkpoint_keeps_the_pascal_decoder(released):
    from sdaanet.modules import bin_size
    model = load_official_checkpoint(released)
    assert model.cfg.decoder_bins == (60, 30, 15, 8)
    assert tuple(bin_size(b, 60) for b in model.decoder.bins) == (60, 30, 15, 8)
