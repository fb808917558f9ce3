"""The console script as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdaanet.cli import main

BIN = Path(sys.executable).parent / 'sdaanet'


def run(*args, cwd=None):
    out = subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    return out


@pytest.mark.parametrize('args', [[], ['data'], ['data', 'generate'], ['data', 'index'], ['data', 'episodes'],
                                  ['data', 'bench-index'], ['smoke'], ['train'], ['eval'], ['predict'], ['bench']])
def test_help(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([*args, '--help'])
    assert e.value.code == 0 and 'usage: sdaanet' in capsys.readouterr().out


def test_bad_value_names_the_option():
    out = run('smoke', '--preset', 'cityscapes')
    assert out.returncode == 2 and "--preset: invalid choice: 'cityscapes'" in out.stderr


def test_smoke_random_weights():
    out = run('smoke', '--random-weights', '--size', '65')
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary['logits_shape'] == [2, 2, 65, 65] and summary['losses']['total'] > 0


def test_data_commands(tmp_path):
    root, cache = tmp_path / 'emb', tmp_path / 'cache'
    out = run('data', 'generate', '--root', str(root), '--n-train', '120', '--n-test', '60')
    assert out.returncode == 0, out.stderr
    out = run('data', 'index', '--root', str(root), '--cache-dir', str(cache), '--split', 'test')
    assert out.returncode == 0, out.stderr
    assert 'embedded test: 60 images' in out.stdout and out.stdout.count('novel in fold') == 20
    out = run('data', 'episodes', '--root', str(root), '--cache-dir', str(cache), '--fold', '1', '--episodes', '7',
              '--out', str(tmp_path / 'ep.json'))
    assert out.returncode == 0, out.stderr
    assert len(json.loads((tmp_path / 'ep.json').read_text())['episodes']) == 7
    out = run('data', 'index', '--root', str(tmp_path / 'missing'), '--cache-dir', str(cache))
    assert out.returncode == 2 and out.stderr.startswith('sdaanet data: error:') and 'missing' in out.stderr
    lst = tmp_path / 'test_list.txt'                      # a test list of the first 10 test images
    test_ids = [i for i in (root / 'ImageSets/Segmentation/val.txt').read_text().split()][:10]
    lst.write_text(''.join(f'JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n' for i in test_ids))
    out = run('data', 'index', '--root', str(root), '--cache-dir', str(cache), '--split', 'test', '--test-list', str(lst))
    assert out.returncode == 0, out.stderr
    assert 'embedded test: 10 images' in out.stdout
    out = run('train', '--preset', 'pascal', '--out', str(tmp_path / 'r'), '--set', 'data.train_list=no/such.txt')
    assert out.returncode == 2 and "data.train_list='no/such.txt'" in out.stderr and not (tmp_path / 'r').exists()


@pytest.mark.parametrize('method, variant, expected', [('baseline', 'paper', (False, False, 'paper')),
                                                       ('saam', 'paper', (True, False, 'paper')),
                                                       ('released', 'paper', (True, True, 'official'))])
def test_bench_method_sets_the_cells_modules(method, variant, expected, capsys):
    "`sdaanet bench --method M` times the model of the study's cell M (its SAAM/SDPM switches; released: its form)."
    main(['bench', '--preset', 'smoke', '--backbone', 'efficientnet_lite0', '--train-size', '33', '--train-batch', '2',
          '--repeats', '1', '--warmup', '0', '--device', 'cpu', '--only', 'ensemble', '--ensemble', '1',
          '--method', method, '--variant', variant])
    out = json.loads(capsys.readouterr().out)
    assert (out['use_saam'], out['use_sdpm'], out['variant']) == expected and out['ensemble']['seeds'] == 1
