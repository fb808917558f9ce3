"""SDPM's three parts (teacher, KD loss, query reweighting) as separate `ModelConfig` switches: they reach `SDAANet`
through `model_config`, `run_config` and `--set`-style overrides, bad values are named, and setting all three equals
the other variant bit for bit on the whole model."""
import pytest
import torch

from sdaanet.core import ModelConfig, model_config
from sdaanet.model import SDAANet
from sdaanet.runs import parse_overrides, run_config

PARTS = ('teacher', 'kd', 'reweight')


def _parts(model): return {p: getattr(model.sdpm, p) for p in PARTS}


def test_defaults_follow_variant():
    for variant in ('official', 'paper'):
        cfg = model_config('smoke', variant=variant)
        assert (cfg.sdpm_teacher, cfg.sdpm_kd, cfg.sdpm_reweight) == (None, None, None)
        assert _parts(SDAANet(cfg)) == dict.fromkeys(PARTS, variant)


@pytest.mark.parametrize('part', PARTS)
def test_switch_reaches_model(part):
    "Each switch alone, on a paper model, through model_config, run_config(model=...) and a --set override."
    key = f'sdpm_{part}'
    want = {**dict.fromkeys(PARTS, 'paper'), part: 'official'}
    cfgs = [model_config('smoke', variant='paper', **{key: 'official'}),
            run_config('smoke', model={'variant': 'paper', key: 'official'}).model,
            run_config('smoke', **parse_overrides(['model.variant=paper', f'model.{key}=official'])).model]
    for cfg in cfgs:
        assert getattr(cfg, key) == 'official' and cfg.sdpm_parts() == want
        assert _parts(SDAANet(cfg)) == want
    assert ModelConfig.from_dict(cfgs[0].to_dict()) == cfgs[0]
    back = run_config('smoke', **parse_overrides([f'model.{key}=official', f'model.{key}=null'])).model
    assert getattr(back, key) is None                    # null: follow variant again


@pytest.mark.parametrize('part', PARTS)
def test_bad_value_is_named(part):
    key = f'sdpm_{part}'
    with pytest.raises(ValueError, match=f"{key}='released'"):
        model_config('smoke', **{key: 'released'})
    with pytest.raises(ValueError, match=f"{key}='released'"):
        run_config('smoke', model={key: 'released'})
    with pytest.raises(ValueError, match=f"{key}='released'"):
        run_config('smoke', **parse_overrides([f'model.{key}=released']))


def test_integral_needs_the_paper_teacher():
    with pytest.raises(ValueError, match="kshot_strategy='integral'.*sdpm_teacher='official'"):
        model_config('smoke', variant='paper', kshot_strategy='integral', sdpm_teacher='official')
    with pytest.raises(ValueError, match="variant='official'"):
        run_config('smoke', **parse_overrides(['model.kshot_strategy=integral']))
    cfg = model_config('smoke', kshot_strategy='integral', sdpm_teacher='paper')      # official KD and reweighting
    assert _parts(SDAANet(cfg)) == dict(teacher='paper', kd='official', reweight='official')


def _train_forward(model, episode):
    torch.manual_seed(0)                                 # the same dropout masks for every model
    return model.train()(*episode)


def test_whole_model_forms(make_episode):
    "On the whole model: all three switches equal the other variant bit for bit; one switch moves only its part."
    episode = make_episode(B=2, K=2, H=33)
    small = dict(shots=2, use_saam=False)               # SAAM does not meet SDPM's parts; leaving it out saves time
    sd = SDAANet(model_config('smoke', variant='paper', **small)).state_dict()
    def run(**kw):
        m = SDAANet(model_config('smoke', **small, **kw)); m.load_state_dict(sd)
        with torch.no_grad(): return _train_forward(m, episode)
    pure = {v: run(variant=v) for v in ('paper', 'official')}
    for variant, other in (('paper', 'official'), ('official', 'paper')):
        mixed = run(variant=variant, sdpm_teacher=other, sdpm_kd=other, sdpm_reweight=other)
        assert torch.equal(mixed['logits'], pure[other]['logits'])
        assert all(torch.equal(mixed['losses'][k], pure[other]['losses'][k]) for k in pure[other]['losses'])
    paper = pure['paper']
    for part in ('teacher', 'kd'):                       # the loss moves, the prediction does not
        one = run(variant='paper', **{f'sdpm_{part}': 'official'})
        assert torch.equal(one['logits'], paper['logits']) and not torch.equal(one['losses']['kd'], paper['losses']['kd'])
    one = run(variant='paper', sdpm_reweight='official')
    assert torch.equal(one['losses']['kd'], paper['losses']['kd']) and not torch.equal(one['logits'], paper['logits'])
