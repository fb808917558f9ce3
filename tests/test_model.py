"""SDAANet end to end: shapes over backbones / shots / sizes / Table III configurations, gradients, inference
without the query mask, BatchNorm modes, and parity with a literal reading of the released forward pass."""
import itertools
import pytest
import torch

from sdaanet.core import ModelConfig, model_config
from sdaanet.model import SDAANet
from sdaanet.released import released_eval_logits

TABLE_III = [dict(use_sdpm=False, use_saam=False), dict(use_sdpm=False, use_saam=True),
             dict(use_sdpm=True, use_saam=False), dict(use_sdpm=True, use_saam=True)]
SIZES = [(321, 321), (473, 473), (321, 417)]
LOSS_KEYS = {'main', 'aux', 'kd', 'support', 'total'}


def _check_forward(model, K, H, W, make_episode, train=True):
    "Training forward (batch 2, with losses) when `train`, then an eval forward (batch 1, with maps)."
    if train:
        q, s, sm, qm = make_episode(B=2, K=K, H=H, W=W)
        out = model.train()(q, s, sm, qm)
        assert out['logits'].shape == (2, 2, H, W)
        assert set(out['losses']) == LOSS_KEYS and all(torch.isfinite(v) for v in out['losses'].values())
        assert (out['losses']['kd'] != 0) == model.cfg.use_sdpm
        assert (out['losses']['support'] != 0) == model.cfg.use_saam
    q, s, sm, _ = make_episode(B=1, K=K, H=H, W=W)
    with torch.no_grad():
        out = model.eval()(q, s, sm, return_maps=True)
    assert 'losses' not in out and out['logits'].shape == (1, 2, H, W)
    maps = out['maps']
    assert maps['prior'].min() >= 0 and maps['prior'].max() <= 1
    assert maps['shot_prototypes'].shape == (1, K, model.cfg.reduce_dim)
    assert (maps['attention'] is None) != model.cfg.use_saam


@pytest.mark.parametrize('config,K', list(itertools.product(TABLE_III, [1, 5])))
def test_table3_configs_and_shots(config, K, make_episode):
    "All four Table III models with 1 and 5 shots (training and inference) on a small non-square episode."
    model = SDAANet(model_config('embedded', backbone_weights=None, shots=K, **config))
    _check_forward(model, K, 65, 81, make_episode)


@pytest.mark.parametrize('backbone', ['resnet50', 'resnet101', 'vgg16_bn', 'efficientnet_lite0'])
@pytest.mark.parametrize('size', SIZES)
def test_backbones_at_paper_sizes(backbone, size, make_episode):
    "Every backbone in the paper-sized SD-AANet (reduce_dim 256, released bins) at 321, 473 and non-square."
    if backbone == 'resnet101' and size != (321, 417):
        pytest.skip('ResNet-101 differs from ResNet-50 only in depth; one size suffices by default')
    _check_forward(SDAANet(ModelConfig(backbone=backbone, backbone_weights=None)), 1, *size, make_episode, train=False)


@pytest.mark.parametrize('backbone', ['resnet50', 'vgg16_bn'])
def test_backbones_five_shot_training(backbone, make_episode):
    _check_forward(SDAANet(ModelConfig(backbone=backbone, backbone_weights=None, shots=5)), 5, 97, 97, make_episode)


@pytest.mark.slow
@pytest.mark.parametrize('backbone,K,size,config', list(itertools.product(
    ['resnet50', 'resnet101', 'vgg16_bn', 'efficientnet_lite0'], [1, 5], SIZES, TABLE_III)))
def test_backbones_full_matrix(backbone, K, size, config, make_episode):
    _check_forward(SDAANet(ModelConfig(backbone=backbone, backbone_weights=None, shots=K, **config)), K, *size,
                   make_episode)


@pytest.mark.parametrize('overrides', [dict(), dict(variant='paper', kshot_strategy='integral'),
                                       dict(variant='paper', kshot_strategy='separate'),
                                       dict(backbone_bn='train')])
@pytest.mark.parametrize('backbone', ['resnet50', 'efficientnet_lite0'])
def test_gradients(backbone, overrides, make_episode):
    "The total loss reaches every trainable parameter and nothing reaches the frozen backbone."
    model = SDAANet(ModelConfig(backbone=backbone, backbone_weights=None, shots=2, **overrides)).train()
    q, s, sm, qm = make_episode(B=2, K=2, H=65)
    model(q, s, sm, qm)['losses']['total'].backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
    assert len(model.trainable_parameters()) == sum(1 for n, _ in model.named_parameters() if not n.startswith('backbone.'))


def test_inference_ignores_query_mask(make_episode):
    "Eval logits do not depend on the query mask, and training without one gives logits and no losses."
    model = SDAANet(model_config('embedded', backbone_weights=None, shots=2)).eval()
    q, s, sm, qm = make_episode(K=2)
    with torch.no_grad():
        a = model(q, s, sm)['logits']
        b = model(q, s, sm, torch.zeros_like(qm))['logits']
    assert torch.equal(a, b)
    model.train()
    with pytest.raises(ValueError, match='at least 2 episodes'):
        model(q, s, sm, qm)
    q, s, sm, qm = make_episode(B=2, K=2)
    assert set(model(q, s, sm)) == {'logits'}


def test_query_and_support_sizes_may_differ(make_episode):
    q, s, sm, _ = make_episode(K=2, H=97, W=129, Hs=81, Ws=65)
    model = SDAANet(model_config('embedded', backbone_weights=None, shots=2)).eval()
    with torch.no_grad():
        assert model(q, s, sm)['logits'].shape == (1, 2, 97, 129)


def test_batched_encoder_equals_separate_passes(make_episode):
    "At eval, one batched backbone pass gives what K+1 separate passes give."
    model = SDAANet(ModelConfig(backbone_weights=None)).eval()
    q, s, _, _ = make_episode(B=2, K=2, H=65)
    groups = [q] + list(s.unbind(1))
    with torch.no_grad():
        batched = model._grouped(model.backbone.features, groups)
        separate = [model.backbone.features(g) for g in groups]
    for (a2, a3), (b2, b3) in zip(batched, separate):
        torch.testing.assert_close(a2, b2, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a3, b3, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('mode,moves', [('frozen', False), ('train', True)])
def test_backbone_batchnorm_mode(mode, moves, make_episode):
    model = SDAANet(model_config('embedded', backbone_weights=None, backbone_bn=mode)).train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if 'running_mean' in k}
    model(*make_episode(B=2))
    after = model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before) == moves
    assert model.backbone.training == moves


def test_bad_inputs_are_named(make_episode):
    model = SDAANet(model_config('embedded', backbone_weights=None)).eval()
    q, s, sm, qm = make_episode(K=2)
    with pytest.raises(ValueError, match='support_masks must be'):
        model(q, s, sm[:, :1])
    with pytest.raises(ValueError, match='query_mask must be'):
        model(q, s, sm, qm[:, :10])
    with pytest.raises(ValueError, match=r'query_img must be \(B, 3, H, W\)'):
        model(q[0], s, sm)


def _parity(backbone, K, size, config, make_episode, seed=0):
    torch.manual_seed(seed)
    model = SDAANet(ModelConfig(backbone=backbone, backbone_weights=None, shots=K, **config))
    model.train()                                    # move the BN statistics away from their defaults
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2); m.running_var.uniform_(0.5, 1.5)
    model.eval()
    q, s, sm, _ = make_episode(K=K, H=size, seed=seed)
    with torch.no_grad():
        ours = model(q, s, sm)['logits']
    ref = released_eval_logits(model, q, s, sm)
    assert (ours - ref).abs().max() <= 1e-4


@pytest.mark.parametrize('config,K', [(TABLE_III[3], 1), (TABLE_III[3], 3), (TABLE_III[0], 2), (TABLE_III[1], 1),
                                      (TABLE_III[2], 2)])
def test_official_parity_small(config, K, make_episode):
    "The official variant matches a literal reading of the released forward pass (small images)."
    _parity('resnet50', K, 65, config, make_episode)


@pytest.mark.slow
@pytest.mark.parametrize('K,size', [(1, 321), (1, 473), (5, 321), (5, 473)])
def test_official_parity_paper_sizes(K, size, make_episode):
    _parity('resnet50', K, size, dict(), make_episode)
