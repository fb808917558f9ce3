"""Backbones: output shapes at stride 8, ImageNet weight loading from a path or torchvision's cache (on state
dicts built here), and the real EfficientNet-Lite0 weights."""
import pytest
import torch
import torchvision

from sdaanet.backbones import build_backbone, imagenet_weights_path

EXPECTED = {'resnet50': (512, 1024, 2048), 'resnet101': (512, 1024, 2048), 'vgg16_bn': (256, 512, 512),
            'efficientnet_lite0': (40, 112, 320)}


@pytest.mark.parametrize('name', list(EXPECTED))
def test_feature_shapes(name):
    "Stride-8 features, but EfficientNet-Lite0's layer4 at stride 16 (the full-model tests cover other sizes)."
    bb, size = build_backbone(name), (129, 161)
    with torch.no_grad():
        feats = bb(torch.zeros(1, 3, *size))
    h = (size[0] - 1) // 8 + 1 if name != 'vgg16_bn' else size[0] // 8
    w = (size[1] - 1) // 8 + 1 if name != 'vgg16_bn' else size[1] // 8
    shapes = [(c, h, w) for c in EXPECTED[name]]
    if name == 'efficientnet_lite0': shapes[2] = (320, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    assert [tuple(f.shape[1:]) for f in feats] == shapes
    assert (bb.mid_channels, bb.high_channels) == (sum(EXPECTED[name][:2]), EXPECTED[name][2])


@pytest.mark.parametrize('name', ['resnet50', 'vgg16_bn'])
def test_imagenet_weights_from_path_and_cache(name, tmp_path, monkeypatch):
    ref = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for p in ref.parameters(): p.normal_()
    path = tmp_path / 'weights.pth'
    torch.save(ref.state_dict(), path)
    from_path = build_backbone(name, str(path))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    cached = imagenet_weights_path(name)
    assert str(cached).startswith(str(tmp_path / 'torch'))
    with pytest.raises(FileNotFoundError, match=str(cached)):
        build_backbone(name, 'imagenet')
    cached.parent.mkdir(parents=True)
    torch.save({'state_dict': ref.state_dict()}, cached)      # a wrapped state dict is accepted too
    from_cache = build_backbone(name, 'imagenet')
    src = ref.state_dict()
    for bb in (from_path, from_cache):
        first_conv = bb.layer0[0].weight
        key = 'conv1.weight' if name.startswith('resnet') else 'features.0.weight'
        assert torch.equal(first_conv, src[key])
        assert sum(p.numel() for p in bb.parameters()) == \
            sum(v.numel() for k, v in src.items() if not k.startswith(('fc.', 'classifier.')) and 'running' not in k
                and 'num_batches' not in k)


def test_wrong_weights_file_is_an_error(tmp_path):
    path = tmp_path / 'r18.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(RuntimeError, match='size mismatch'):
        build_backbone('resnet50', str(path))


def test_efficientnet_lite0_imagenet_features_are_real():
    "The shipped weights load into the stride-8 backbone (the notebook shows the classifier calls chelsea a cat)."
    rand, real = build_backbone('efficientnet_lite0'), build_backbone('efficientnet_lite0', 'imagenet')
    assert not torch.equal(rand.layer0[0].weight, real.layer0[0].weight)
    assert all(not p.requires_grad for p in real.parameters())
