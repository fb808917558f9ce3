"""Faults that name themselves (issue 21): a full disk while saving, a log cut by a killed run, a damaged feature
cache, a half-configured torchrun environment, a closed output pipe, refused data commands, and a script that
starts the study's Dask cluster without a main guard. Every case asserts its outcome: one line naming the file or
variable and what to do (no traceback through the command line), a counted warning, or the right result."""
import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdaanet.checkpoints import SaveError, load_checkpoint, save_checkpoint
from sdaanet.cli import main
from sdaanet.core import model_config
from sdaanet.data import DataSpec
from sdaanet.embedded import generate_embedded
from sdaanet.engine import init_distributed
from sdaanet.features import feature_cache
from sdaanet.model import SDAANet
from test_bad_inputs import check

BIN = Path(sys.executable).parent
TORCH_WRITE_ERROR = RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598')  # /dev/full


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    "Every data cache of a test in its own folder (`$SDAANET_CACHE`)."
    monkeypatch.setenv('SDAANET_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A tiny embedded dataset and a smoke run stopped after iteration 1 of 2 (its folder holds last.pth and the log)."
    d = tmp_path_factory.mktemp('faults')
    root = generate_embedded(d / 'emb', n_train=40, n_test=40, size_range=(65, 81), progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('SDAANET_CACHE', str(d / 'cache'))
        assert main(_train_argv(root, d / 'run', '--stop-after', '1')) == 0
    return dict(d=d, root=root, run=d / 'run')


def _train_argv(root, out, *more):
    return ['train', '--preset', 'smoke', '--data-root', str(root), '--out', str(out), '--set', 'train.max_iters=2',
            '--set', 'train.checkpoint_every=1', '--set', 'train.batch_size=2', *more]


def _run_copy(files, tmp_path) -> Path:
    return Path(shutil.copytree(files['run'], tmp_path / 'run'))


def _failing_save(error):
    "A `torch.save` that writes part of the file, then fails with `error` (as a full disk does)."
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b'PK\x03\x04 part of a zip')
        raise error
    return save


# ------------------------------------------------------------------ 1. a full disk while saving

@pytest.mark.parametrize('error', [TORCH_WRITE_ERROR, OSError(errno.ENOSPC, 'No space left on device')],
                         ids=['torch-writer', 'ENOSPC'])
def test_full_disk_keeps_the_earlier_checkpoint(tmp_path, monkeypatch, error):
    path = save_checkpoint(tmp_path / 'last.pth', SDAANet(model_config('smoke')), iteration=1)
    before = path.read_bytes()
    monkeypatch.setattr(torch, 'save', _failing_save(error))
    with pytest.raises(SaveError, match='disk is full') as e:
        save_checkpoint(path, SDAANet(model_config('smoke')), iteration=2)
    assert isinstance(e.value, OSError) and str(path) in str(e.value) and '--resume' in str(e.value)
    assert str(error).splitlines()[0] in str(e.value)                        # the short reason
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)[1]['iteration'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth']              # no temporary file left


def test_full_disk_during_training_is_one_line_and_resumable(files, tmp_path, monkeypatch, capsys):
    run = _run_copy(files, tmp_path)
    last = run / 'checkpoints' / 'last.pth'
    before = last.read_bytes()
    monkeypatch.setattr(torch, 'save', _failing_save(TORCH_WRITE_ERROR))
    err = check(_train_argv(files['root'], run, '--resume'), capsys, 1)
    assert err.strip().splitlines()[-1].startswith(                            # one line (after the progress bars)
        f'sdaanet train: error: SaveError: could not write {last}: the disk is full (or the write failed: '
        '[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598); free space and rerun with --resume')
    monkeypatch.undo()
    assert last.read_bytes() == before and sorted(p.name for p in last.parent.iterdir()) == ['last.pth']
    assert main(_train_argv(files['root'], run, '--resume')) == 0                 # after freeing space
    assert load_checkpoint(last)[1]['iteration'] == 2


def test_full_disk_while_saving_the_feature_cache(files, cache_dir, monkeypatch):
    spec = DataSpec('embedded', str(files['root']), split='test', size=65, cache_dir=str(cache_dir))
    monkeypatch.setattr(torch, 'save', _failing_save(OSError(errno.ENOSPC, 'No space left on device')))
    with pytest.raises(SaveError, match=r"could not write .*features-embedded-test-65-\w+\.pt: the disk is full"):
        feature_cache(SDAANet(model_config('smoke')).eval(), spec, progress=False)
    assert not list(cache_dir.glob('*features*'))                           # no part of a cache file is left


# ------------------------------------------------------------------ 2. a log cut by a killed run

def test_cut_last_log_line_is_dropped_on_resume(files, tmp_path, capsys):
    run = _run_copy(files, tmp_path)
    log = run / 'train_log.jsonl'
    rows = log.read_text()
    log.write_text(rows + '{"iteration": 2, "epoch": 0, "lr": 0.00')            # what a kill mid-write leaves
    with pytest.warns(UserWarning, match=rf"{log}: dropped 1 cut last line \(line {rows.count(chr(10)) + 1}\)"):
        assert main(_train_argv(files['root'], run, '--resume')) == 0
    kept = [json.loads(line) for line in log.read_text().splitlines()]          # every line whole again
    assert kept[-1]['iteration'] == 2


def test_broken_log_line_in_the_middle_names_file_and_line(files, tmp_path, capsys):
    run = _run_copy(files, tmp_path)
    log = run / 'train_log.jsonl'
    lines = log.read_text().splitlines()
    assert len(lines) >= 1
    log.write_text('\n'.join(['{"iteration": 1, "to', *lines]) + '\n')
    check(_train_argv(files['root'], run, '--resume'), capsys, 2, f'{log}:1: not a JSON row', '--overwrite')


# ------------------------------------------------------------------ 3. the feature cache: damaged files, image content

@pytest.mark.parametrize('damage', ['truncated', 'overwritten'])
def test_damaged_feature_cache_is_moved_aside_and_rebuilt(files, cache_dir, damage):
    spec = DataSpec('embedded', str(files['root']), split='test', size=65, cache_dir=str(cache_dir))
    model = SDAANet(model_config('smoke')).eval()
    first = feature_cache(model, spec, progress=False)
    path = next(cache_dir.glob('features-*.pt'))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == 'truncated' else data[:200] + bytes(2000) + data[2200:])
    with pytest.warns(UserWarning, match=rf"feature cache {path} is unreadable .*moved it to {path.name}\.corrupt"):
        again = feature_cache(model, spec, progress=False)
    assert torch.equal(again.f4, first.f4) and again.key == first.key
    assert path.with_name(path.name + '.corrupt').exists() and torch.load(path, weights_only=False)['key'] == first.key


def test_feature_cache_key_covers_the_image_files(files, tmp_path, cache_dir):
    "A second root with the same ids and labels but other pixels gets features of its own."
    other = Path(shutil.copytree(files['root'], tmp_path / 'other'))
    for jpg in (other / 'JPEGImages').glob('*.jpg'):
        Image.fromarray(255 - np.asarray(Image.open(jpg))).save(jpg, quality=92)
    model = SDAANet(model_config('smoke')).eval()
    a = feature_cache(model, DataSpec('embedded', str(files['root']), split='test', size=65), progress=False)
    b = feature_cache(model, DataSpec('embedded', str(other), split='test', size=65), progress=False)
    assert a.ids == b.ids and a.pairs == b.pairs                                # same ids and labels ...
    assert a.key != b.key and not torch.equal(a.f2, b.f2)                       # ... other images, other features
    assert len(list(cache_dir.glob('features-*.pt'))) == 2


# ------------------------------------------------------------------ 4. a half-configured torchrun environment

TORCHRUN_ENV = dict(WORLD_SIZE='2', RANK='0', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT='29531',
                    TORCHELASTIC_RUN_ID='none')


def _no_process_group(*args, **kwargs):
    raise AssertionError(f"init_process_group{args} would wait for ranks that never come")


@pytest.mark.parametrize('unset', [('LOCAL_RANK', 'TORCHELASTIC_RUN_ID'), ('MASTER_PORT',)],
                         ids=['left-from-torchrun', 'no-port'])
def test_world_size_without_torchrun_is_refused(files, tmp_path, monkeypatch, capsys, unset):
    for k, v in TORCHRUN_ENV.items(): monkeypatch.setenv(k, v)
    for k in unset: monkeypatch.delenv(k)
    monkeypatch.setattr(torch.distributed, 'init_process_group', _no_process_group)
    check(_train_argv(files['root'], tmp_path / 'run'), capsys, 2, 'WORLD_SIZE=2', *unset,
          'unset WORLD_SIZE (left from an earlier torchrun?) or launch with torchrun')


def test_process_group_has_a_short_timeout(monkeypatch):
    for k, v in TORCHRUN_ENV.items(): monkeypatch.setenv(k, v)
    seen = {}
    def init(backend, **kwargs):
        seen.update(kwargs, backend=backend)
        raise RuntimeError('stop here')
    monkeypatch.setattr(torch.distributed, 'init_process_group', init)
    with pytest.raises(RuntimeError, match='stop here'):
        init_distributed(torch.device('cpu'))
    assert seen['backend'] == 'gloo' and seen['timeout'].total_seconds() <= 600


# ------------------------------------------------------------------ 5. a closed output pipe

@pytest.mark.parametrize('reader', ['head -1', 'head -n 0'])
def test_closed_pipe_is_quiet(files, tmp_path, reader):
    "`head -n 0` exits before reading, so the writer surely meets the closed pipe; `head -1` is how users meet it."
    cmd = (f"'{BIN / 'sdaanet'}' data index --root '{files['root']}' --split both --cache-dir '{tmp_path}' | {reader}; "
           "echo \"status ${PIPESTATUS[0]}\" >&2")
    out = subprocess.run(['bash', '-c', cmd], capture_output=True, text=True, timeout=300)
    status = int(out.stderr.strip().splitlines()[-1].split()[-1])
    assert 'rror' not in out.stderr and 'Traceback' not in out.stderr, out.stderr
    assert status == 141 if reader == 'head -n 0' else status in (0, 141), out.stderr
    assert out.stdout == ('embedded train: 40 images\n' if reader == 'head -1' else '')


# ------------------------------------------------------------------ 6. refused data commands

def test_refused_seed_leaves_no_folder(tmp_path, capsys):
    root = tmp_path / 'emb'
    check(['data', 'generate', '--root', root, '--seed', '-1', '--n-train', '2', '--n-test', '2'], capsys, 2,
          'seed=-1', 'expected an integer >= 0')
    assert not root.exists()


def test_index_of_a_folder_without_images(files, tmp_path, capsys):
    root = tmp_path / 'emb'
    for sub in ('JPEGImages', 'SegmentationClassAug', 'ImageSets/Segmentation'): (root / sub).mkdir(parents=True)
    for name in ('train.txt', 'val.txt'): (root / 'ImageSets/Segmentation' / name).write_text('')
    shutil.copy(files['root'] / 'classes.txt', root)
    check(['data', 'index', '--root', root, '--cache-dir', tmp_path / 'cache'], capsys, 2,
          f'{root} has no readable train image (0 listed, 0 unreadable)', 'JPEGImages/*.jpg',
          'ImageSets/Segmentation/train.txt')


# ------------------------------------------------------------------ 7. the study's cluster started without a main guard

def _script(tmp_path, body: str):
    path = tmp_path / 'study_script.py'
    path.write_text(body)
    return path, subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_unguarded_script_is_told_to_add_the_main_guard(tmp_path):
    path, out = _script(tmp_path, "from sdaanet.cluster import local_cluster\n\ncluster = local_cluster(1)\n")
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith(f'RuntimeError: {path}:3 ') and \
        "put the call under `if __name__ == '__main__':`" in last, out.stderr
    assert 'Nanny' not in out.stderr                                            # refused before any worker starts


def test_guarded_script_passes_the_check(tmp_path):
    path, out = _script(tmp_path, "from sdaanet.cluster import _check_main_guard\n\ndef main():\n    _check_main_guard()\n"
                                  "    print('checked')\n\nif __name__ == '__main__':\n    main()\n")
    assert out.returncode == 0 and out.stdout.strip() == 'checked', out.stderr
