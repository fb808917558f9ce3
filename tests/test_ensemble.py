"""Seeds trained as one vectorised ensemble equal the same seeds trained alone by `train` (to float rounding)."""
import pytest
import torch

from sdaanet.core import model_config, seed_everything
from sdaanet.data import DataSpec, load_index
from sdaanet.embedded import generate_embedded
from sdaanet.ensemble import Ensemble, ensemble_models, train_ensemble
from sdaanet.features import CachedTrainEpisodes, feature_cache
from sdaanet.model import SDAANet
from sdaanet.train import train, train_config

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def one_thread():
    "One intra-op thread: on two cores shared with other jobs, two threads make these small convolutions far slower."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def cached_episodes(tmp_path_factory):
    "The smoke-sized embedded benchmark's training episodes (fold 0, 1-shot) served from a feature cache."
    tmp = tmp_path_factory.mktemp('ensemble')
    generate_embedded(tmp / 'embedded', n_train=60, n_test=60, size_range=(65, 81), progress=False)
    spec = DataSpec('embedded', str(tmp / 'embedded'), split='train', size=65, cache_dir=str(tmp / 'cache'))
    index = load_index(spec, progress=False)
    seed_everything(0)
    cache = feature_cache(SDAANet(model_config('smoke')), spec, index, progress=False)
    return CachedTrainEpisodes(cache, index, fold=0, shots=1)


@pytest.mark.parametrize('overrides', [{}, dict(use_sdpm=False, use_saam=False)], ids=['sd-aanet', 'baseline'])
def test_ensemble_equals_seeds_trained_alone(cached_episodes, tmp_path, overrides):
    """Seeds 0-2 as one ensemble and each alone (`train`, the model built under `seed_everything(seed)` as `run_train`
    builds it), 10 AdamW iterations of batch 4 with warm-up: every trainable parameter and head buffer (SAAM's
    BatchNorm statistics) agrees to float rounding, and the frozen backbone is untouched."""
    cfg = model_config('smoke', **overrides)
    tcfg = train_config('smoke', batch_size=4, max_iters=10, workers=0, log_every=100, device='cpu')
    initial = ensemble_models(cfg, SEEDS)
    start = [{k: v.clone() for k, v in m.state_dict().items()} for m in initial]
    trained = train_ensemble(initial, cached_episodes, tcfg, SEEDS)
    for seed, ens, init in zip(SEEDS, trained, start):
        seed_everything(seed)
        alone = SDAANet(cfg)
        train(alone, cached_episodes, tcfg.replace(seed=seed), tmp_path / f'seed{seed}', progress=False)
        got, want = dict(ens.named_parameters()), dict(alone.named_parameters())
        for name, p in want.items():
            if p.requires_grad:
                assert not torch.equal(p, init[name]), name              # it trained
                torch.testing.assert_close(got[name], p, rtol=1e-4, atol=1e-5, msg=lambda m: f'seed {seed} {name}: {m}')
            else:
                assert torch.equal(got[name], p), name                    # the frozen backbone
        got, want = dict(ens.named_buffers()), dict(alone.named_buffers())
        for name, b in want.items():
            torch.testing.assert_close(got[name], b, rtol=1e-4, atol=1e-5, msg=lambda m: f'seed {seed} {name}: {m}')
    a, b = (dict(m.named_parameters())['decoder.cls.3.weight'] for m in trained[:2])
    assert not torch.allclose(a, b)                                       # the seeds are different models


def test_ensemble_refuses(cached_episodes):
    models = ensemble_models(model_config('smoke'), (0, 1))
    cfg = train_config('smoke', device='cpu')
    with pytest.raises(ValueError, match='2 models for 3 seeds'): Ensemble(models, cfg, (0, 1, 2))
    with pytest.raises(ValueError, match='differ in their ModelConfig'):
        Ensemble([models[0], SDAANet(model_config('smoke', use_sdpm=False))], cfg, (0, 1))
    ens = Ensemble(models, cfg, (0, 1))
    batch = torch.utils.data.default_collate([cached_episodes[i] for i in range(2)])
    with pytest.raises(ValueError, match='one batch per seed'): ens.step([batch], 1e-3)
    one = torch.utils.data.default_collate([cached_episodes[0]])
    with pytest.raises(ValueError, match='at least 2 episodes'): ens.step([one, one], 1e-3)
