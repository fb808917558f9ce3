"""Reliability (issue 14): damaged checkpoints, runs that keep their record (resume, lock, stops), evaluation on a
fold the model trained on, non-finite values, prediction inputs (sizes, masks, image modes, names, prior only) and
API inputs; issue 21: run folders and inputs never overwritten (train over a run, eval's lock, predict's outputs),
EXIF-oriented photos, palette, anti-aliased and blurred masks, 16-bit images in datasets. Every case checks the
outcome: an error naming the input, a counted warning, or the right result."""
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdaanet.checkpoints import (CheckpointError, CheckpointMismatchError, export_official, load_checkpoint,
                                 load_official_checkpoint, save_checkpoint)
from sdaanet.core import model_config, seed_everything
from sdaanet.engine import NonFiniteError, episode_forward
from sdaanet.evaluate import evaluate
from sdaanet.model import SDAANet
from sdaanet.predict import predict_files, predict_images, read_rgb, read_support_mask
from sdaanet.runs import run_config, run_eval, run_train
from sdaanet.train import NonFiniteLossError, RunLockedError, run_lock, train, train_config
from sdaanet.fakes import SquareEpisodes
from fakes import nan_losses


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny models: one thread is faster than two, and far faster on a busy shared CPU."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(seed=0):
    seed_everything(seed)
    return SDAANet(model_config('smoke'))


def _cfg(**kw):
    return train_config('smoke', **{'batch_size': 2, 'workers': 0, 'log_every': 1, 'max_iters': 2, **kw})


DATA = SquareEpisodes(n=8, size=33)


def _train(out, resume=False, stop_after=None, **kw):
    return train(_model(), DATA, _cfg(**kw), out, resume=resume, stop_after=stop_after, progress=False)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    "One trained checkpoint (2 iterations at 33 px) and its run folder."
    out = tmp_path_factory.mktemp('ckpt')
    _train(out)
    return out / 'checkpoints' / 'last.pth'


# ---------------------------------------------------------------- 1. checkpoints are checked before torch reads them
def _damage(kind, path: Path, good: Path):
    if kind == 'empty': path.write_bytes(b'')
    elif kind == 'truncated': path.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    elif kind == 'text': path.write_text('model weights: see the README\n')
    elif kind == 'tensor': torch.save(torch.zeros(3), path)
    elif kind == 'no-keys': torch.save({'epoch': 3, 'lr': 0.1}, path)
    elif kind == 'other-model': torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), path)
    elif kind == 'legacy-truncated':
        torch.save({'a': torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:-9])


@pytest.mark.parametrize('kind,expect', [
    ('empty', r'is empty \(0 bytes\); expected a file written by torch.save'),
    ('truncated', r'is truncated .*expected a file written by torch.save'),
    ('text', r'is not a torch file .*a text file\?'),
    ('tensor', r'holds a Tensor; expected a dict'),
    ('no-keys', r"is not an sdaanet checkpoint: it has the keys \['epoch', 'lr'\]; expected one written by save_checkpoint"),
    ('other-model', r"is not an sdaanet checkpoint: it has the keys \['weight', 'bias'\]"),
    ('legacy-truncated', r'cannot read checkpoint .*truncated or damaged'),
])
def test_damaged_checkpoint_names_file(tmp_path, ckpt, kind, expect):
    path = tmp_path / f'{kind}.pth'
    _damage(kind, path, ckpt)
    with pytest.raises(CheckpointError, match=expect) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint(tmp_path / 'nope.pth')


def test_our_format_with_another_models_weights(tmp_path, ckpt):
    bad = torch.load(ckpt, weights_only=True)
    bad['model'] = SDAANet(model_config('smoke', reduce_dim=16)).state_dict()
    torch.save(bad, tmp_path / 'mixed.pth')
    with pytest.raises(CheckpointMismatchError, match=r'(?s)mixed.pth does not fit the model:.*mis-shaped keys'):
        load_checkpoint(tmp_path / 'mixed.pth')


def test_newer_checkpoint_version_refused(tmp_path, ckpt):
    newer = {**torch.load(ckpt, weights_only=True), 'version': 99}
    torch.save(newer, tmp_path / 'newer.pth')
    with pytest.raises(CheckpointError, match='newer.pth is format version 99; this sdaanet reads up to 1'):
        load_checkpoint(tmp_path / 'newer.pth')


def test_released_loader_refuses_ours_and_foreign_weights(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match='last.pth is one of our checkpoints; use load_checkpoint'):
        load_official_checkpoint(ckpt)
    torch.save({'state_dict': torch.nn.Conv2d(3, 8, 3).state_dict()}, tmp_path / 'conv.pth')
    with pytest.raises(CheckpointMismatchError, match=r"conv.pth: released checkpoint has no 'down_query.0.weight'"):
        load_official_checkpoint(tmp_path / 'conv.pth')
    torch.save({'state_dict': {'a': 1}}, tmp_path / 'ints.pth')
    with pytest.raises(CheckpointError, match=r"ints.pth is not a released checkpoint"):
        load_official_checkpoint(tmp_path / 'ints.pth')


def _copy(ckpt, dest):
    "A copy of the fixture's run folder."
    return Path(shutil.copytree(ckpt.parent.parent, dest))


def test_resume_from_damaged_checkpoint_names_it(tmp_path):
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'last.pth').write_bytes(b'\x80\x02garbage')
    with pytest.raises(CheckpointError, match=r'(?s)checkpoint to resume .*last.pth: .*truncated or damaged'):
        _train(tmp_path, resume=True)
    assert not (tmp_path / '.lock').exists()


# ---------------------------------------------------------------- 2. runs keep their record
def test_resume_with_other_settings_is_refused_before_writing(tmp_path, ckpt):
    tmp_path = _copy(ckpt, tmp_path / 'run')
    before = {p.name: p.read_bytes() for p in (tmp_path / 'train_log.jsonl', tmp_path / 'checkpoints' / 'last.pth')}
    with pytest.raises(ValueError, match=r"train.base_lr: 0.002 -> 0.5, train.optimizer: 'adamw' -> 'sgd'"):
        _train(tmp_path, resume=True, base_lr=0.5, optimizer='sgd')
    assert {p.name: p.read_bytes() for p in (tmp_path / 'train_log.jsonl', tmp_path / 'checkpoints' / 'last.pth')} == before


def test_resume_may_extend_max_iters_and_records_it(tmp_path, ckpt):
    tmp_path = _copy(ckpt, tmp_path / 'run')
    summary = _train(tmp_path, resume=True, max_iters=3)
    assert summary['iterations'] == 3 and summary['resumed_from'] == 2
    assert summary['changes'] == {'train.max_iters': [2, 3]}
    rows = [json.loads(l) for l in (tmp_path / 'train_log.jsonl').read_text().splitlines()]
    assert {'iteration': 2, 'resumed': 'train.max_iters: 2 -> 3'} in rows and rows[-1]['iteration'] == 3
    with pytest.raises(ValueError, match='train.max_iters: 3 -> 2'):          # shrinking is a change of schedule
        _train(tmp_path, resume=True, max_iters=2)


def test_resume_true_with_nothing_to_resume(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"new holds no run to resume .*resume='auto'"):
        _train(tmp_path / 'new', resume=True)
    assert not (tmp_path / 'new').exists()


def test_resume_auto_starts_or_continues(tmp_path, ckpt):
    first = _train(tmp_path / 'new', resume='auto', stop_after=1)
    assert (first['resumed_from'], first['iterations']) == (None, 1)
    second = _train(_copy(ckpt, tmp_path / 'run'), resume='auto')              # a finished run: nothing left to do
    assert (second['resumed_from'], second['iterations'], second['finished']) == (2, 2, True)


@pytest.mark.parametrize('value', ['yes', None, 2])
def test_resume_value_checked(tmp_path, value):
    with pytest.raises(ValueError, match=f"resume={value!r} is not allowed"):
        _train(tmp_path, resume=value)


def test_folder_locked_by_another_live_process(tmp_path):
    other = os.getppid()                                      # a live process that is not this one
    (tmp_path / '.lock').write_text(str(other))
    with pytest.raises(RunLockedError, match=rf'run folder {tmp_path} is being written by process {other}'):
        _train(tmp_path)
    assert (tmp_path / '.lock').read_text() == str(other) and not (tmp_path / 'train_log.jsonl').exists()


def test_second_run_on_a_locked_folder_fails(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunLockedError, match=f'process {os.getpid()}'):
            _train(tmp_path)
    assert not (tmp_path / '.lock').exists()


def test_stale_lock_is_taken_over_with_one_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
    (tmp_path / '.lock').write_text(str(dead.pid))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert _train(tmp_path, max_iters=1)['finished']
    taken = [w for w in caught if 'taking over the lock' in str(w.message)]
    assert len(taken) == 1 and f'process {dead.pid}' in str(taken[0].message)
    assert not (tmp_path / '.lock').exists()


def test_lock_released_and_no_checkpoint_named_after_a_failed_start(tmp_path, ckpt, monkeypatch):
    "A run that fails before its first checkpoint names none (not a stale last.pth of an earlier run)."
    tmp_path = _copy(ckpt, tmp_path / 'run')                  # an earlier run, replaced
    nan_losses(monkeypatch)
    with pytest.raises(NonFiniteLossError, match='no checkpoint of this run was written yet'):
        train(_model(), SquareEpisodes(n=8, size=33), _cfg(), tmp_path, progress=False, overwrite=True)
    assert not (tmp_path / '.lock').exists()


def test_stopped_run_names_a_checkpoint_that_exists(tmp_path):
    summary = _train(tmp_path, stop_after=1, max_iters=4, checkpoint_every=3)
    assert summary['iterations'] == 1 and Path(summary['checkpoint']).is_file()
    assert torch.load(summary['checkpoint'], weights_only=True)['iteration'] == 1
    with pytest.raises(ValueError, match='stop_after=0 is not allowed'):
        _train(tmp_path / 'zero', stop_after=0)


def test_checkpoint_records_its_training(ckpt):
    model, saved = load_checkpoint(ckpt)
    assert saved['trained_on'] == {'dataset': None, 'fold': None, 'input_size': 33}
    assert model.trained_on['input_size'] == 33


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny embedded dataset and a 2-iteration smoke run on fold 0."
    from sdaanet.embedded import generate_embedded
    d = tmp_path_factory.mktemp('run')
    generate_embedded(d / 'emb', n_train=60, n_test=60, size_range=(65, 81), progress=False)
    cfg = run_config('smoke', data_root=str(d / 'emb'), cache_dir=str(d / 'cache'),
                     train=dict(max_iters=2, batch_size=2), eval=dict(episodes=4))
    run_train(cfg, d / 'run', progress=False)
    return d, cfg


def test_run_train_refuses_changed_settings_and_writes_nothing(run):
    d, cfg = run
    files = [d / 'run' / 'config.json', d / 'run' / 'train_log.jsonl', d / 'run' / 'checkpoints' / 'last.pth']
    before = [f.read_bytes() for f in files]
    changed = run_config('smoke', data_root=cfg.data_root, cache_dir=cfg.cache_dir,
                         train=dict(max_iters=2, batch_size=2, base_lr=0.5), model=dict(use_sdpm=False), eval=dict(episodes=4))
    with pytest.raises(ValueError, match=r'model.use_sdpm: True -> False, train.base_lr: 0.002 -> 0.5'):
        run_train(changed, d / 'run', resume=True, progress=False)
    assert [f.read_bytes() for f in files] == before
    assert json.loads(files[0].read_text())['train']['base_lr'] == 0.002


def test_run_train_extended_keeps_config_and_log(run, tmp_path):
    d, cfg = run
    shutil.copytree(d / 'run', tmp_path / 'run')
    longer = run_config('smoke', data_root=cfg.data_root, cache_dir=cfg.cache_dir,
                        train=dict(max_iters=3, batch_size=2), eval=dict(episodes=4))
    assert run_train(longer, tmp_path / 'run', resume='auto', progress=False)['iterations'] == 3
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['train']['max_iters'] == 3
    assert 'train.max_iters: 2 -> 3' in (tmp_path / 'run' / 'train_log.jsonl').read_text()


# ---------------------------------------------------------------- 3. a test fold whose classes the model trained on
def test_run_eval_refuses_the_training_folds_classes(run, tmp_path):
    d, cfg = run
    other = run_config('smoke', data_root=cfg.data_root, cache_dir=cfg.cache_dir, fold=1, eval=dict(episodes=4))
    with pytest.raises(ValueError, match=r'trained on embedded fold 0: the classes of test fold 1 .*allow_seen_classes'):
        run_eval(other, tmp_path / 'eval', checkpoint=d / 'run' / 'checkpoints' / 'last.pth', progress=False)
    assert not (tmp_path / 'eval').exists()
    model, _ = load_checkpoint(d / 'run' / 'checkpoints' / 'last.pth')
    with pytest.raises(ValueError, match='fold 0'):                 # also for a model loaded beforehand
        run_eval(other, tmp_path / 'eval', model=model, progress=False)


def test_allow_seen_classes_is_recorded(run, tmp_path):
    d, cfg = run
    other = run_config('smoke', data_root=cfg.data_root, cache_dir=cfg.cache_dir, fold=1,
                       eval=dict(episodes=4, allow_seen_classes=True))
    run_eval(other, tmp_path / 'eval', checkpoint=d / 'run' / 'checkpoints' / 'last.pth', progress=False)
    summary = json.loads((tmp_path / 'eval' / 'eval_summary.json').read_text())
    assert (summary['trained_fold'], summary['seen_classes'], summary['allow_seen_classes']) == (0, True, True)


# ---------------------------------------------------------------- 4. non-finite values stop evaluation and predict
def _nan_model():
    model = _model().eval()
    with torch.no_grad(): next(model.decoder.parameters()).fill_(float('nan'))
    return model


def _batch(episodes=(3, 4)):
    items = [SquareEpisodes(size=33)[e] for e in episodes]
    return torch.utils.data.default_collate(items)


def test_evaluate_stops_on_nan_scores_naming_episodes():
    with pytest.raises(NonFiniteError, match=r"scores are NaN or infinite for episode 3, episode 4"):
        evaluate(_nan_model(), [_batch()], classes=[1])


def test_evaluate_stops_on_nan_input_naming_episode():
    batch = _batch()
    batch['support_imgs'][1, 0, :, 5, 5] = float('inf')
    with pytest.raises(NonFiniteError, match=r'support_imgs is NaN or infinite in episode 4; expected finite'):
        evaluate(_model(), [batch], classes=[1])


def _scene(y, x, size=64):
    "A checkerboard square on flat grey, and its mask."
    img = np.full((size, size, 3), 120, np.uint8)
    yy, xx = np.mgrid[0:24, 0:24]
    img[y:y + 24, x:x + 24] = np.where(((yy // 4 + xx // 4) % 2)[..., None] == 0, [230, 30, 30], [20, 20, 200])
    mask = np.zeros((size, size), np.uint8); mask[y:y + 24, x:x + 24] = 1
    return img, mask


@pytest.fixture
def files(tmp_path):
    s, sm = _scene(8, 8); q, _ = _scene(30, 20)
    Image.fromarray(s).save(tmp_path / 's.png'); Image.fromarray(sm * 255).save(tmp_path / 'sm.png')
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir(); Image.fromarray(q).save(tmp_path / sub / 'q.png')
    return tmp_path


def test_predict_stops_on_nan_naming_file(files):
    with pytest.raises(NonFiniteError, match=r'scores are NaN or infinite for .*b/q.png'):
        predict_files(_nan_model(), [files / 's.png'], [files / 'sm.png'], [files / 'b' / 'q.png'], files / 'out', size=33)


# ---------------------------------------------------------------- 5. predict
def test_default_size_is_the_training_size(ckpt, files):
    model, _ = load_checkpoint(ckpt)
    rows = predict_files(model, [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png'], files / 'out')
    assert rows[0]['size'] == 33
    released = load_official_checkpoint(export_official(model), backbone='efficientnet_lite0')
    assert predict_files(released, [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png'], files / 'out2',
                         batch_size=1)[0]['size'] == 473
    with pytest.raises(ValueError, match='pass size='):               # a model built in Python records none
        predict_files(_model(), [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png'], files / 'out3')


def test_queries_sharing_a_name_get_their_own_outputs(files):
    rows = predict_files(_model(), [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png', files / 'b' / 'q.png'],
                         files / 'out', size=33)
    masks = [Path(r['mask']).name for r in rows]
    assert masks == ['q_mask.png', 'q-2_mask.png'] and all(Path(r['mask']).exists() for r in rows)


def test_prior_only_without_a_trained_model(files):
    "The ImageNet encoder's prior mask finds the support's checkerboard square in the query."
    rows = predict_files(None, [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png'], files / 'out',
                         size=193, prior_only=True)
    pred = np.asarray(Image.open(rows[0]['mask'])) > 0
    truth = _scene(30, 20)[1] > 0
    assert pred[truth].mean() > 0.9 and pred[~truth].mean() < 0.3
    with pytest.raises(ValueError, match='model=None needs prior_only=True'):
        predict_files(None, [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png'], files / 'out')


def _png(path, a, mode=None):
    Image.fromarray(np.asarray(a), mode).save(path)
    return path


@pytest.mark.parametrize('values,class_id,want', [
    ([[0, 1], [1, 0]], None, [[0, 1], [1, 0]]),                   # 0/1
    ([[0, 255], [255, 0]], None, [[0, 1], [1, 0]]),               # 0/255: 255 is the object
    ([[0, 15], [255, 15]], None, [[0, 1], [255, 1]]),             # one class and the VOC border
    ([[0, 7], [128, 255]], 128, [[0, 0], [1, 255]]),              # a label map with class_id
    ([[0, 9], [9, 0]], None, [[0, 1], [1, 0]]),                   # any single non-zero value
])
def test_support_mask_values(tmp_path, values, class_id, want):
    path = _png(tmp_path / 'm.png', np.array(values, np.uint8))
    assert read_support_mask(path, (2, 2), class_id).tolist() == want


def test_sixteen_bit_and_bilevel_masks(tmp_path):
    assert read_support_mask(_png(tmp_path / 'm16.png', np.array([[0, 65535]], np.uint16)), (1, 2)).tolist() == [[0, 1]]
    Image.fromarray(np.array([[True, False]])).save(tmp_path / 'm1.png')
    assert read_support_mask(tmp_path / 'm1.png', (1, 2)).tolist() == [[1, 0]]


def test_label_map_needs_class_id(tmp_path):
    path = _png(tmp_path / 'labels.png', np.array([[0, 3], [8, 255]], np.uint8))
    with pytest.raises(ValueError, match=r'labels.png is a label map with the values \[0, 3, 8, 255\]; pass class_id='):
        read_support_mask(path, (2, 2))
    with pytest.raises(ValueError, match=r'labels.png marks no object pixel of class_id=5; it holds the values \[0, 3, 8, 255\]'):
        read_support_mask(path, (2, 2), class_id=5)
    with pytest.raises(ValueError, match='class_id=0 is not allowed'):
        read_support_mask(path, (2, 2), class_id=0)


def test_jpeg_mask_is_thresholded_with_one_warning(tmp_path):
    square = np.zeros((32, 32), np.uint8); square[8:24, 8:24] = 255
    Image.fromarray(square).convert('RGB').save(tmp_path / 'm.jpg', quality=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        mask = read_support_mask(tmp_path / 'm.jpg', (32, 32))
    assert [str(w.message) for w in caught] == [f"support mask {tmp_path / 'm.jpg'} is a JPEG (lossy): thresholded at 128; save masks as PNG"]
    assert set(np.unique(mask)) == {0, 1} and (mask == (square > 0)).mean() > 0.97


def _png16(path, a):
    "A 16-bit PNG (grey or RGB) written by hand: Pillow writes 16-bit RGB as 8-bit."
    h, w = a.shape[:2]
    raw = b''.join(b'\x00' + a[y].astype('>u2').tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2 if a.ndim == 3 else 0, 0, 0, 0))
                     + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    return path


@pytest.mark.parametrize('kind,want', [
    ('grey16', [[0, 0, 0], [128, 128, 128], [255, 255, 255]]),
    ('rgb16', [[255, 128, 0]] * 3),
    ('rgba', [[10, 20, 30]] * 3),
    ('la', [[77, 77, 77]] * 3),
    ('palette', [[255, 0, 0], [0, 255, 0], [255, 0, 0]]),
])
def test_image_modes_become_8bit_rgb(tmp_path, kind, want):
    p = tmp_path / f'{kind}.png'
    if kind == 'grey16': _png16(p, np.array([[0, 32896, 65535]], np.uint16))
    elif kind == 'rgb16': _png16(p, np.tile(np.array([65535, 32896, 0], np.uint16), (1, 3, 1)))
    elif kind == 'rgba': _png(p, np.tile(np.array([10, 20, 30, 0], np.uint8), (1, 3, 1)), 'RGBA')
    elif kind == 'la': _png(p, np.tile(np.array([77, 128], np.uint8), (1, 3, 1)), 'LA')
    else:
        im = Image.fromarray(np.array([[0, 1, 0]], np.uint8), 'P'); im.putpalette([255, 0, 0, 0, 255, 0]); im.save(p)
    img = read_rgb(p)
    assert img.dtype == np.uint8 and img.tolist() == [want]


# ---------------------------------------------------------------- 6. API inputs
def _arrays():
    s, m = _scene(8, 8)
    return [s], [s], [m]


@pytest.mark.parametrize('change,expect', [
    (lambda q, s, m: (q, s, [m[0] * 0.7]), 'support mask 0 holds the value 0.7; expected 0'),
    (lambda q, s, m: ([q[0].astype(np.float32)], s, m), r'query 0 is float32 \(64, 64, 3\); expected a uint8 RGB array'),
    (lambda q, s, m: (q, s, [m[0] * 0]), 'support mask 0 marks no object pixel'),
])
def test_predict_images_checks_arrays(change, expect):
    with pytest.raises(ValueError, match=expect):
        predict_images(_model(), *change(*_arrays()), size=33)


@pytest.mark.parametrize('key,change,expect', [
    ('support_masks', lambda t: t * 0.7, 'support_masks hold the value 0.7; expected 0 .*1 .*255'),
    ('query_img', lambda t: (t * 50 + 100).clamp(0, 255).byte(), 'query_img is a torch.uint8 tensor; expected float images'),
])
def test_episode_forward_checks_tensors(key, change, expect):
    batch = _batch()
    batch[key] = change(batch[key])
    with pytest.raises(ValueError, match=expect):
        episode_forward(_model().eval(), batch)



@pytest.mark.parametrize('key,change,expect', [
    ('query_img', lambda t: t.index_fill(0, torch.tensor([1]), float('nan')), r'query_img is NaN or infinite in batch row\(s\) \[1\]'),
    ('support_imgs', lambda t: t.index_fill(0, torch.tensor([0]), float('inf')), r'support_imgs is NaN or infinite in batch row\(s\) \[0\]'),
    ('support_masks', lambda t: t * 2, 'support_masks hold the value 2'),
    ('support_masks', lambda t: t.float() * 0.5, 'support_masks hold the value 0.5'),
    ('query_img', lambda t: (t * 50 + 100).clamp(0, 255).byte(), 'query_img is a torch.uint8 tensor'),
])
def test_model_forward_checks_what_enters_it(key, change, expect):
    "`SDAANet.forward` called directly checks its inputs as `episode_forward` does (not all-NaN logits read as background)."
    batch = _batch()
    batch[key] = change(batch[key])
    with pytest.raises(ValueError, match=expect):
        _model().eval()(batch['query_img'], batch['support_imgs'], batch['support_masks'])

@pytest.mark.parametrize('overrides,expect', [
    (dict(data_root=5), 'data_root=5 is not allowed; expected a folder path'),
    (dict(data_root=''), "data_root='' is not allowed"),
    (dict(cache_dir=3), 'cache_dir=3 is not allowed'),
    (dict(eval=dict(allow_seen_classes='yes')), "eval.allow_seen_classes='yes' is not allowed; expected true or false"),
])
def test_run_config_checks_values(overrides, expect):
    with pytest.raises(ValueError, match=expect):
        run_config('smoke', **overrides)


def test_run_config_takes_a_path_as_data_root(tmp_path):
    assert run_config('smoke', data_root=tmp_path).data_root == str(tmp_path)


# ---------------------------------------------------------------- 7. nothing the user made or a finished run owns is overwritten
def _digest(folder: Path) -> dict:
    "Every file under `folder` -> its bytes' hash."
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_train_into_a_finished_run_is_refused_and_leaves_it_as_it_was(tmp_path, ckpt):
    run = _copy(ckpt, tmp_path / 'run')
    before = _digest(run)
    with pytest.raises(FileExistsError, match=rf"{run} already holds a run .*last.pth.*--resume .*--overwrite"):
        _train(run)
    assert _digest(run) == before and not (run / '.lock').exists()


def test_overwrite_replaces_the_run_with_its_best_checkpoint_and_results(tmp_path, ckpt):
    run = _copy(ckpt, tmp_path / 'run')
    shutil.copy(run / 'checkpoints' / 'last.pth', run / 'checkpoints' / 'best.pth')   # an earlier run's selected model
    (run / 'eval_summary.json').write_text('{"miou": 0.9}')
    (run / 'notes.txt').write_text('mine')                                           # not the run's: kept
    with pytest.raises(ValueError, match='exclude each other'):
        train(_model(), DATA, _cfg(), run, resume=True, overwrite=True, progress=False)
    summary = train(_model(), DATA, _cfg(max_iters=1), run, overwrite=True, progress=False)
    assert {'checkpoints/last.pth', 'checkpoints/best.pth', 'train_log.jsonl', 'eval_summary.json'} <= set(summary['replaced'])
    assert not (run / 'checkpoints' / 'best.pth').exists() and not (run / 'eval_summary.json').exists()
    assert torch.load(run / 'checkpoints' / 'last.pth', weights_only=True)['iteration'] == 1
    assert (run / 'notes.txt').read_text() == 'mine'


def test_run_train_refuses_a_new_run_over_a_run_before_reading_data(run, tmp_path):
    d, cfg = run
    shutil.copytree(d / 'run', tmp_path / 'run')
    before = _digest(tmp_path / 'run')
    with pytest.raises(FileExistsError, match='already holds a run'):
        run_train(cfg, tmp_path / 'run', progress=False)
    assert _digest(tmp_path / 'run') == before


def test_run_eval_takes_the_folder_lock(run, tmp_path):
    "A second evaluation into a folder another process is writing is refused, and writes nothing there."
    d, cfg = run
    out = tmp_path / 'eval'; out.mkdir()
    other = os.getppid()                                      # a live process that is not this one
    (out / '.lock').write_text(str(other))
    with pytest.raises(RunLockedError, match=rf'run folder {out} is being written by process {other}'):
        run_eval(cfg, out, checkpoint=d / 'run' / 'checkpoints' / 'last.pth', progress=False)
    assert sorted(p.name for p in out.iterdir()) == ['.lock']
    run_eval(cfg, tmp_path / 'ok', checkpoint=d / 'run' / 'checkpoints' / 'last.pth', progress=False)
    assert sorted(p.name for p in (tmp_path / 'ok').iterdir()) == ['episodes', 'eval_summary.json', 'metrics.csv',
                                                                   'metrics_summary.csv', 'records.csv']   # no lock, no temp file


def test_predict_into_the_input_folder_never_changes_an_input(files):
    "The query `s.png`'s outputs would be `s_mask.png`, the support mask: refused before anything is written."
    shutil.copy(files / 'sm.png', files / 's_mask.png')
    before = _digest(files)
    with pytest.raises(ValueError, match=rf"output {files / 's_mask.png'} would replace the support mask {files / 's_mask.png'}"):
        predict_files(_model(), [files / 's.png'], [files / 's_mask.png'], [files / 's.png'], files, size=33)
    assert _digest(files) == before


def test_predict_refuses_an_output_that_is_a_link_to_an_input(files, tmp_path):
    (tmp_path / 'out').mkdir()
    os.link(files / 'sm.png', tmp_path / 'out' / 'q_overlay.png')             # a hard link to the support mask
    with pytest.raises(ValueError, match='would replace the support mask'):
        predict_files(_model(), [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png'], tmp_path / 'out', size=33)


# ---------------------------------------------------------------- 8. images and masks as people make them
def _exif_jpeg(path, img: np.ndarray, orientation: int):
    "A JPEG of `img` as stored, with an EXIF orientation tag (6: shown turned 90 degrees clockwise)."
    exif = Image.Exif(); exif[0x0112] = orientation
    Image.fromarray(img).save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize('orientation', [6, 8])
def test_exif_rotated_query_gets_a_mask_of_its_shown_size(files, orientation):
    q, _ = _scene(10, 20, size=64)
    stored = q[:40]                                                          # 64 wide, 40 high as stored
    path = _exif_jpeg(files / 'phone.jpg', stored, orientation)
    shown = np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270 if orientation == 6 else Image.Transpose.ROTATE_90))
    assert read_rgb(path).shape == shown.shape == (64, 40, 3)
    assert np.abs(read_rgb(path).astype(int) - shown).mean() < 1
    rows = predict_files(_model(), [files / 's.png'], [files / 'sm.png'], [path], files / 'out', size=33)
    assert np.asarray(Image.open(rows[0]['mask'])).shape == (64, 40)


def test_exif_rotated_support_photo_takes_its_mask_as_shown(files):
    "A support photo stored on its side, with the mask drawn on the photo as shown: the mask fits it."
    s, sm = _scene(8, 8)
    s, sm = s[:, :48], sm[:, :48]                                            # 48 wide, 64 high as shown
    path = _exif_jpeg(files / 'support.jpg', np.ascontiguousarray(np.rot90(s, 1)), 6)   # stored 64 wide, 48 high
    Image.fromarray(sm * 255).save(files / 'support_mask.png')
    assert (read_rgb(path).astype(int) - s).__abs__().mean() < 8
    rows = predict_files(_model(), [path], [files / 'support_mask.png'], [files / 'a' / 'q.png'], files / 'out', size=33)
    assert rows[0]['support_masks'] == [f"{files / 'support_mask.png'}: object = value 255"]


def test_dataset_reader_applies_exif_and_reads_16_bit(tmp_path):
    from sdaanet.data import _image_size, read_image
    img = np.zeros((30, 50, 3), np.uint8); img[:, :10] = 255
    path = _exif_jpeg(tmp_path / 'x.jpg', img, 6)
    assert read_image(path).shape == (50, 30, 3) and _image_size(path) == (50, 30)
    assert read_image(path)[:10].mean() > 200 and read_image(path)[-10:].mean() < 30      # the left edge is now on top
    g16 = _png16(tmp_path / 'g16.png', np.array([[0, 32896, 65535]], np.uint16))
    assert read_image(g16)[..., 0].tolist() == [[0, 128, 255]]                # was all white (clipped)


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def _disk(size=64, r=20):
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy + 0.5 - size / 2) ** 2 + (xx + 0.5 - size * 27 / 64) ** 2 < r * r        # pixel centres: any scale


def test_white_on_black_palette_mask_is_read_by_colour(tmp_path):
    "Palette index 0 drawn white (the object), index 1 black: read by index the object would be the background."
    obj = _disk()
    im = Image.fromarray(np.where(obj, 0, 1).astype(np.uint8), 'P'); im.putpalette([255, 255, 255, 0, 0, 0])
    im.save(tmp_path / 'm.png')
    assert _iou(read_support_mask(tmp_path / 'm.png', obj.shape) == 1, obj) == 1.0
    from sdaanet.predict import support_mask_rule
    assert support_mask_rule(tmp_path / 'm.png', obj.shape)[1].startswith('palette colours (not the VOC palette) read as grey levels')


def test_voc_palette_mask_is_read_by_index(tmp_path):
    from sdaanet.predict import VOC_PALETTE, support_mask_rule
    lbl = np.zeros((8, 8), np.uint8); lbl[2:6, 2:6] = 15; lbl[1, 1:7] = 255
    im = Image.fromarray(lbl, 'P'); im.putpalette(VOC_PALETTE.flatten().tolist()); im.save(tmp_path / 'voc.png')
    mask, rule = support_mask_rule(tmp_path / 'voc.png', lbl.shape)
    assert mask.tolist() == np.where(lbl == 255, 255, lbl == 15).tolist() and rule == 'object = value 15, 255 = ignore'
    assert (read_support_mask(tmp_path / 'voc.png', lbl.shape, class_id=15) == mask).all()


def _antialiased(levels: str):
    "A 0/255 disk with a soft edge: one grey level (128), or many (drawn at 4x and shrunk)."
    if levels == 'one':
        obj = _disk(); inner = _disk(r=19)
        return np.where(inner, 255, np.where(obj, 128, 0)).astype(np.uint8), obj
    big = Image.fromarray((_disk(256, 80) * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BOX)
    return np.asarray(big), _disk(64, 20)


@pytest.mark.parametrize('levels', ['one', 'many'])
def test_antialiased_mask_is_thresholded(tmp_path, levels):
    soft, obj = _antialiased(levels)
    assert len(np.unique(soft)) > 2
    Image.fromarray(soft).save(tmp_path / 'soft.png')
    mask = read_support_mask(tmp_path / 'soft.png', soft.shape)
    assert _iou(mask == 1, obj) > 0.95 and not (mask == 255).any()
    from sdaanet.predict import support_mask_rule
    rule = support_mask_rule(tmp_path / 'soft.png', soft.shape)[1]
    assert rule.startswith('0/255 with soft edges') and rule.endswith('object where >= 128')


def test_mask_threshold_reads_a_blurred_mask(tmp_path):
    from scipy.ndimage import gaussian_filter
    obj = _disk()
    blurred = gaussian_filter(obj * 200.0, 2).round().astype(np.uint8)       # no 255 at all, every grey below 200
    Image.fromarray(blurred).save(tmp_path / 'blur.png')
    with pytest.raises(ValueError, match=r'label map with the values .*mask_threshold='):
        read_support_mask(tmp_path / 'blur.png', obj.shape)
    mask = read_support_mask(tmp_path / 'blur.png', obj.shape, mask_threshold=100)
    assert _iou(mask == 1, obj) > 0.95
    for bad in (0, 256, 1.5, True):
        with pytest.raises(ValueError, match=f'mask_threshold={bad!r} is not allowed'):
            read_support_mask(tmp_path / 'blur.png', obj.shape, mask_threshold=bad)
    with pytest.raises(ValueError, match='exclude each other'):
        read_support_mask(tmp_path / 'blur.png', obj.shape, class_id=3, mask_threshold=100)


def test_predict_names_the_mask_rule(files):
    rows = predict_files(_model(), [files / 's.png'], [files / 'sm.png'], [files / 'a' / 'q.png'], files / 'out', size=33,
                         mask_threshold=200)
    assert rows[0]['support_masks'] == [f"{files / 'sm.png'}: object where >= 200 (mask_threshold)"]
