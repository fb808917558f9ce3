"""The paper-path check (`sdaanet check`) on its smallest setting, and the pascal preset's training with stand-in weights."""
import json
import math

import pytest

from fakes import nan_losses
from sdaanet.check import Stage, _train_stage, check, check_config, stage_overrides, run_stage, write_check_coco, write_check_voc
from sdaanet.cli import main
from sdaanet.runs import run_config, run_train

STAGES = ['data', 'guards', 'weights', *(f'{s} {v} {k}-shot' for v in ('official', 'paper') for k in (1, 5) for s in ('train', 'eval')),
          'study + report']


@pytest.mark.parametrize('preset', ['pascal', 'coco'])
def test_smallest_check_runs_every_stage(preset, tmp_path):
    rows = check(preset, tmp_path / 'check', device='cpu', iters=1, episodes=1, smallest=True, log=lambda s: None)
    assert [r.name for r in rows] == STAGES
    assert [r.name for r in rows if r.status != 'ok'] == [], [(r.name, r.detail) for r in rows if r.status != 'ok']
    assert all('estimate' not in r.detail and r.estimate.endswith('per fold (includes the loaders\' start-up)')
               for r in rows if r.name.startswith('eval'))
    assert (tmp_path / 'check' / 'html' / 'index.html').is_file()
    reg = (tmp_path / 'check' / 'study' / 'registry.csv').read_text()
    assert 'sdaanet-1shot-separate-fold0' in reg and 'released-1shot-separate-fold0' in reg


def test_a_non_finite_loss_fails_its_stage(tmp_path, monkeypatch):
    root = write_check_voc(tmp_path / 'VOC2012')
    overrides = stage_overrides('pascal', root, tmp_path / 'cache', 'stand-in', 'cpu', 2, 1, smallest=True)
    cfg = check_config('pascal', overrides, 'official', 1)
    nan_losses(monkeypatch)
    rows = []
    run_stage(rows, 'train official 1-shot', lambda: _train_stage(cfg, tmp_path / 'run'), log=lambda s: None)
    run_stage(rows, 'eval official 1-shot', lambda: ('', '', None), needs=['train official 1-shot'], log=lambda s: None)
    assert rows[0].status == 'FAILED' and 'NonFiniteLossError: non-finite loss at iteration 0' in rows[0].detail
    assert rows[1].status == 'skipped' and rows[1].detail == 'needs train official 1-shot'


def test_cli_exits_1_naming_the_failed_stage(tmp_path, monkeypatch, capsys):
    import sdaanet.check
    monkeypatch.setattr(sdaanet.check, 'check', lambda *a, **kw: [Stage('data', 'ok', 0.1, 'x'),
                                                                  Stage('train official 1-shot', 'FAILED', 1.0, 'boom')])
    with pytest.raises(SystemExit) as e: main(['check', '--dir', str(tmp_path), '--smallest'])
    assert e.value.code == 1
    out, err = capsys.readouterr()
    assert 'FAILED: train official 1-shot' in out and "did not pass: train official 1-shot" in err
    assert 'FAILED: train official 1-shot' in (tmp_path / 'check.txt').read_text()


def test_check_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(SystemExit) as e: main(['check', '--dir', str(tmp_path)])
    assert e.value.code == 2 and (tmp_path / 'notes.txt').read_text() == 'mine'


def test_pascal_preset_trains_5_finite_iterations_with_stand_in_weights(tmp_path):
    root = write_check_voc(tmp_path / 'VOC2012')
    cfg = run_config('pascal', data_root=str(root), cache_dir=str(tmp_path / 'cache'),
                     model={'backbone_weights': 'stand-in'}, train={'max_iters': 5, 'log_every': 1, 'device': 'cpu'})
    assert (cfg.train_size, cfg.train.batch_size, cfg.train.optimizer, cfg.model.backbone) == (None, 4, 'sgd', 'resnet50')
    run_train(cfg, tmp_path / 'run', progress=False)
    log = [json.loads(line) for line in (tmp_path / 'run' / 'train_log.jsonl').read_text().splitlines()]
    assert [r['iteration'] for r in log] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r[k]) for r in log for k in ('main', 'aux', 'kd', 'support', 'total'))


def test_coco_check_tree_has_six_images_per_class(tmp_path):
    from sdaanet.data import DataSpec, load_index
    root = write_check_coco(tmp_path / 'coco', size=(320, 240))
    for split in ('train', 'test'):
        idx = load_index(DataSpec('coco', str(root), split=split, cache_dir=str(tmp_path / 'cache')), progress=False)
        assert [len(idx.images_of(c)) for c in range(1, 81)] == [6] * 80
