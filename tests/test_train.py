"""Training engine: exact resume, non-finite loss handling, configuration errors."""
import json
import pytest
import torch

from sdaanet.core import model_config, seed_everything
from sdaanet.model import SDAANet
from sdaanet.train import NonFiniteLossError, train, train_config
from sdaanet.fakes import SquareEpisodes
from fakes import nan_losses


def _model():
    seed_everything(0)
    return SDAANet(model_config('embedded', backbone_weights=None))


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_is_exact(tmp_path, workers):
    "Stopped after 3 of 6 iterations (mid-epoch) and resumed: the same weights and log as an uninterrupted run."
    cfg = train_config('embedded', batch_size=2, workers=workers, log_every=1, checkpoint_every=1, max_iters=6)
    data = SquareEpisodes(n=8, size=33)
    a = _model()
    train(a, data, cfg, tmp_path / 'a', progress=False)
    train(_model(), data, cfg, tmp_path / 'b', stop_after=3, progress=False)
    b = _model()
    summary = train(b, data, cfg, tmp_path / 'b', resume=True, progress=False)
    assert summary['iterations'] == 6 and summary['finished']
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    def rows(run):
        return [{k: v for k, v in json.loads(l).items() if k != 'it_per_s'}
                for l in (tmp_path / run / 'train_log.jsonl').read_text().splitlines()]
    assert rows('a') == rows('b') and [r['iteration'] for r in rows('a')] == [1, 2, 3, 4, 5, 6]


def test_resume_differs_without_saved_rng(tmp_path):
    "The check above can fail: a fresh start of the second half (no resume) gives other weights."
    cfg = train_config('embedded', batch_size=2, workers=0, log_every=1, max_iters=4)
    data = SquareEpisodes(n=8, size=33)
    a = _model()
    train(a, data, cfg, tmp_path / 'a', progress=False)
    b = _model()
    train(b, data, cfg.replace(seed=cfg.seed + 1), tmp_path / 'b', progress=False)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_checkpoint_callback_is_repeated_after_a_kill_inside_it(tmp_path):
    """A run killed while `on_checkpoint` runs (here: it raises at iteration 2) redoes that checkpoint on resume, so
    every checkpoint iteration reaches the callback; called after `last.pth`, iteration 2 would be skipped."""
    cfg = train_config('embedded', batch_size=2, workers=0, log_every=1, checkpoint_every=1, max_iters=3)
    data, seen = SquareEpisodes(n=8, size=33), []

    def killed_at_2(it, best, model):
        if it == 2: raise KeyboardInterrupt('killed')
        seen.append(it)
    with pytest.raises(KeyboardInterrupt): train(_model(), data, cfg, tmp_path, on_checkpoint=killed_at_2, progress=False)
    train(_model(), data, cfg, tmp_path, resume=True, on_checkpoint=lambda it, best, model: seen.append(it), progress=False)
    assert seen == [1, 2, 3]


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = train_config('embedded', batch_size=2, workers=0, log_every=1, checkpoint_every=1, max_iters=4)
    data = SquareEpisodes(n=8, size=33)
    train(_model(), data, cfg, tmp_path, stop_after=2, progress=False)
    good = (tmp_path / 'checkpoints' / 'last.pth').read_bytes()
    nan_losses(monkeypatch)
    with pytest.raises(NonFiniteLossError, match=r'iteration 2 .*main=nan'):
        train(_model(), data, cfg, tmp_path, resume=True, progress=False)
    assert (tmp_path / 'checkpoints' / 'last.pth').read_bytes() == good


def test_too_few_episodes_for_a_batch(tmp_path):
    with pytest.raises(ValueError, match='cannot fill one batch'):
        train(_model(), SquareEpisodes(n=3), train_config('embedded', batch_size=4, workers=0), tmp_path,
              progress=False)


def test_tensorboard_events(tmp_path):
    "With the tensorboard package (a dev requirement) installed, the log rows also go to TensorBoard event files."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = train_config('embedded', batch_size=2, workers=0, log_every=1, max_iters=2)
    train(_model(), SquareEpisodes(n=4, size=33), cfg, tmp_path, progress=False)
    acc = EventAccumulator(str(tmp_path / 'tensorboard')); acc.Reload()
    assert [e.step for e in acc.Scalars('train/total')] == [1, 2]
    assert {'train/lr', 'train/main', 'train/kd', 'train/support'} <= set(acc.Tags()['scalars'])


def test_early_stop_after_patience(tmp_path):
    "Validation at every iteration; two in a row without a new best end the run, best.pth keeps the best."
    scores = iter([0.3, 0.2, 0.25, 0.9, 0.9])
    cfg = train_config('embedded', batch_size=2, workers=0, log_every=1, checkpoint_every=1, max_iters=5,
                       select='val', patience=2)
    summary = train(_model(), SquareEpisodes(n=8, size=33), cfg, tmp_path, validate=lambda m: next(scores),
                    progress=False)
    assert summary['stopped_early'] and summary['iterations'] == 3
    assert summary['best'] == {'score': 0.3, 'iteration': 1}
    rows = [json.loads(l) for l in (tmp_path / 'train_log.jsonl').read_text().splitlines()]
    assert [(r['iteration'], r['val_miou']) for r in rows if 'val_miou' in r] == [(1, 0.3), (2, 0.2), (3, 0.25)]
    assert torch.load(tmp_path / 'checkpoints' / 'best.pth', weights_only=True)['iteration'] == 1
