"""Runs from the command line: train + eval on a tiny embedded dataset, resume, and the same under torchrun with
2 CPU processes (gloo): the sharded evaluation equals the single-process one on the same episodes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from sdaanet.embedded import generate_embedded
    d = tmp_path_factory.mktemp('runs')
    generate_embedded(d / 'emb', n_train=120, n_test=60, size_range=(65, 81), progress=False)
    common = ['--data-root', str(d / 'emb'), '--set', f'cache_dir={d / "cache"}', '--set', 'train_size=65',
              '--set', 'model.backbone_weights=null', '--set', 'train.batch_size=2', '--set', 'train.workers=0',
              '--set', 'train.max_iters=2', '--set', 'train.log_every=1', '--set', 'eval.episodes=12', '--set', 'eval.size=65',
              '--set', 'eval.workers=0', '--set', 'eval.seeds=2']
    return d, common


def sdaanet(*args, torchrun=False):
    cmd = [str(BIN / 'sdaanet'), *args]
    if torchrun: cmd = [str(BIN / 'torchrun'), '--standalone', '--nproc_per_node', '2', '--no-python', *cmd]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_train_then_eval(tiny):
    d, common = tiny
    sdaanet('train', '--out', str(d / 'run'), *common)
    run = d / 'run'
    assert (run / 'checkpoints' / 'last.pth').exists() and json.loads((run / 'config.json').read_text())['fold'] == 0
    assert len((run / 'train_log.jsonl').read_text().splitlines()) == 2
    sdaanet('eval', '--out', str(run), *common)
    summary = json.loads((run / 'eval_summary.json').read_text())
    assert 0 <= summary['miou'] <= 1 and summary['seeds'] == [321, 322]
    records = pd.read_csv(run / 'records.csv')
    assert len(records) == 24 and set(records['seed']) == {321, 322}
    rows = pd.read_csv(run / 'metrics_summary.csv')
    assert set(rows['metric']) == {'IoU', 'mIoU', 'FB-IoU'}
    assert sorted(p.name for p in (run / 'episodes').iterdir()) == ['seed321.json', 'seed322.json']


def test_torchrun_eval_equals_single_process(tiny):
    d, common = tiny
    if not (d / 'run' / 'checkpoints' / 'last.pth').exists():
        sdaanet('train', '--out', str(d / 'run'), *common)
    ckpt = str(d / 'run' / 'checkpoints' / 'last.pth')
    sdaanet('eval', '--out', str(d / 'single'), '--checkpoint', ckpt, *common)
    sdaanet('eval', '--out', str(d / 'ddp'), '--checkpoint', ckpt, *common, torchrun=True)
    a, b = (json.loads((d / r / 'eval_summary.json').read_text()) for r in ('single', 'ddp'))
    assert a['per_seed'] == b['per_seed'] and a['miou'] == b['miou']
    ra, rb = (pd.read_csv(d / r / 'records.csv') for r in ('single', 'ddp'))
    pd.testing.assert_frame_equal(ra, rb)


def test_torchrun_training(tiny):
    d, common = tiny
    sdaanet('train', '--out', str(d / 'ddp_train'), *common, torchrun=True)
    assert (d / 'ddp_train' / 'checkpoints' / 'last.pth').exists()
    rows = (d / 'ddp_train' / 'train_log.jsonl').read_text().splitlines()
    assert [json.loads(r)['iteration'] for r in rows] == [1, 2]        # rank 0 alone writes the log


def test_predict_command(tiny):
    d, common = tiny
    if not (d / 'run' / 'checkpoints' / 'last.pth').exists():
        sdaanet('train', '--out', str(d / 'run'), *common)
    emb = d / 'emb'
    ids = sorted(p.stem for p in (emb / 'JPEGImages').iterdir())[:3]
    label = emb / 'SegmentationClassAug' / f'{ids[0]}.png'
    import numpy as np
    from PIL import Image
    lbl = np.asarray(Image.open(label))
    cls = int(np.bincount(lbl[lbl != 255].ravel(), minlength=21)[1:].argmax()) + 1
    Image.fromarray(((lbl == cls) * 1).astype(np.uint8)).save(d / 'support_mask.png')
    out = sdaanet('predict', '--checkpoint', str(d / 'run' / 'checkpoints' / 'last.pth'),
                  '--support', str(emb / 'JPEGImages' / f'{ids[0]}.jpg'), '--support-mask', str(d / 'support_mask.png'),
                  '--query', *(str(emb / 'JPEGImages' / f'{i}.jpg') for i in ids[1:]), '--out', str(d / 'pred'),
                  '--size', '65')
    rows = json.loads(out.stdout)
    assert len(rows) == 2
    for r, i in zip(rows, ids[1:]):
        mask = np.asarray(Image.open(r['mask']))
        assert mask.shape == np.asarray(Image.open(emb / 'JPEGImages' / f'{i}.jpg')).shape[:2]
        assert set(np.unique(mask)) <= {0, 255} and Path(r['overlay']).exists()


def test_validation_selection_holds_out_base_class_images(tmp_path):
    "select='val': the best checkpoint on base-class episodes of held-out training images, which training never sees."
    from sdaanet.embedded import generate_embedded
    from sdaanet.runs import run_config, run_train, data_spec
    from sdaanet.data import load_index, split_validation
    generate_embedded(tmp_path / 'emb', n_train=300, n_test=60, size_range=(65, 81), progress=False)
    cfg = run_config('embedded', data_root=str(tmp_path / 'emb'), cache_dir=str(tmp_path / 'cache'), train_size=65,
                     model=dict(backbone_weights=None), train=dict(max_iters=2, batch_size=2, workers=0, select='val',
                     val_fraction=0.3, checkpoint_every=1), eval=dict(episodes=6, size=65, workers=0))
    summary = run_train(cfg, tmp_path / 'val-run', progress=False)
    assert (tmp_path / 'val-run' / 'checkpoints' / 'best.pth').exists() and 0 <= summary['best']['score'] <= 1
    train_index, val_index = split_validation(load_index(data_spec(cfg, 'train')), 0.3, cfg.train.seed)
    assert len(val_index.ids) == 90 and not set(train_index.ids) & set(val_index.ids)
    assert val_index.classes(0) == train_index.classes(0) and 1 not in val_index.classes(0)   # base classes



@pytest.mark.parametrize('select, split', [('best-test', 'test'), ('val', 'train')])
def test_validation_from_cached_features_with_pyramid_evaluation(tmp_path, select, split):
    """cache_features with select='best-test' or 'val' and multiscale='pyramid': validation during training scores
    single-scale, so it needs the cache of its split at one size only (the smoke preset's 65 px), and trains."""
    from sdaanet.embedded import generate_embedded
    from sdaanet.runs import run_config, run_train
    generate_embedded(tmp_path / 'emb', n_train=300, n_test=60, size_range=(65, 81), progress=False)
    cfg = run_config('smoke', data_root=str(tmp_path / 'emb'), cache_dir=str(tmp_path / 'cache'), cache_features=True,
                     train=dict(max_iters=1, batch_size=2, select=select, val_fraction=0.3, checkpoint_every=1),
                     eval=dict(episodes=2, multiscale='pyramid'))
    summary = run_train(cfg, tmp_path / 'run', progress=False)
    assert (tmp_path / 'run' / 'checkpoints' / 'best.pth').exists() and 0 <= summary['best']['score'] <= 1
    sizes = sorted(int(p.name.split('-')[3]) for p in (tmp_path / 'cache').glob(f'features-embedded-{split}-*.pt'))
    assert sizes == [65]
