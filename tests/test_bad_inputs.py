"""Bad input through the command line, the way a new user meets it. Every case asserts its outcome class:

- `usage`: exit code 2 and one line `sdaanet <command>: error: ...` (or argparse's `error:` line) that names the
  offending input, no traceback, and nothing written where the command would write;
- `runtime`: exit code 1, one line with the error's type and a pointer to `--debug`, no traceback.

The API-level cases (damaged checkpoints, resume and locks, masks, non-finite values, ...) are in
`tests/test_reliability.py`."""
import pytest
import torch
from sdaanet.cli import main
from sdaanet.core import model_config
from sdaanet.model import SDAANet
from sdaanet.checkpoints import save_checkpoint
from sdaanet.embedded import generate_embedded


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A tiny embedded dataset, one of our checkpoints (smoke model), damaged checkpoints, images and a regular file."
    d = tmp_path_factory.mktemp('bad')
    root = generate_embedded(d / 'emb', n_train=40, n_test=40, size_range=(65, 81), progress=False)
    ckpt = save_checkpoint(d / 'model.pth', SDAANet(model_config('smoke')))
    (d / 'empty.pth').write_bytes(b'')
    (d / 'text.pth').write_text('this is not a checkpoint\n')
    (d / 'truncated.pth').write_bytes(ckpt.read_bytes()[:1000])
    torch.save({'weights': torch.zeros(2)}, d / 'foreign.pth')
    (d / 'a_file').write_text('x')
    img = next((root / 'JPEGImages').glob('*.jpg'))
    import numpy as np
    from PIL import Image
    lbl = np.asarray(Image.open(root / 'SegmentationClassAug' / f'{img.stem}.png'))
    mask = d / 'mask.png'                                            # a 0/255 mask of the first class in the label
    Image.fromarray(((lbl == lbl[(lbl > 0) & (lbl < 255)].min()) * 255).astype(np.uint8)).save(mask)
    return dict(d=d, root=root, ckpt=ckpt, img=img, lbl=mask)


def run_cli(argv, capsys):
    "Exit code and stderr of `sdaanet argv` run in this process."
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


def check(argv, capsys, code, *names):
    "`argv` exits with `code`; stderr holds every one of `names` and no traceback."
    got, err = run_cli(argv, capsys)
    assert got == code, (got, err)
    assert 'Traceback' not in err and 'error' in err, err
    for name in names: assert str(name) in err, (name, err)
    return err


# ------------------------------------------------------------------ options argparse checks (usage, exit 2)

ARGPARSE_CASES = [
    (['smoke', '--size', '0'], "--size: '0' is not allowed"),
    (['smoke', '--shots', '-1'], "--shots: '-1'"),
    (['smoke', '--batch', 'two'], "--batch: 'two'"),
    (['smoke', '--preset', 'cityscapes'], "'cityscapes'"),
    (['data', 'generate', '--n-train', '0'], '--n-train'),
    (['data', 'index', '--dataset', 'voc'], "'voc'"),
    (['data', 'episodes'], '--out'),
    (['data', 'episodes', '--out', 'e.json', '--fold', '4'], '--fold'),
    (['data', 'episodes', '--out', 'e.json', '--episodes', '0'], '--episodes'),
    (['data', 'bench-index', '--n-labels', '-5'], '--n-labels'),
    (['data', 'bench-index', '--workers', '-1'], '--workers'),
    (['train', '--out', 'r', '--fold', '7'], '--fold'),
    (['train', '--out', 'r', '--shots', '0'], '--shots'),
    (['train', '--out', 'r', '--stop-after', '-1'], '--stop-after'),
    (['train', '--out', 'r', '--resume', 'maybe'], '--resume'),
    (['train'], '--out'),
    (['eval', '--out', 'r', '--preset', 'voc'], '--preset'),
    (['predict', '--checkpoint', 'c', '--released', 'r', '--support', 's', '--support-mask', 'm', '--query', 'q',
      '--out', 'o'], 'not allowed with argument'),
    (['predict', '--checkpoint', 'c', '--support', 's', '--support-mask', 'm', '--query', 'q', '--out', 'o',
      '--size', '0'], '--size'),
    (['predict', '--checkpoint', 'c', '--support', 's', '--support-mask', 'm', '--query', 'q', '--out', 'o',
      '--batch-size', '0'], '--batch-size'),
    (['predict', '--checkpoint', 'c', '--support-mask', 'm', '--query', 'q', '--out', 'o'], '--support'),
    (['bench', '--size', '0'], '--size'),
    (['bench', '--support-cover', '1.5'], '--support-cover'),
    (['bench', '--support-cover', '0'], '--support-cover'),
    (['bench', '--backbone', 'resnet18'], '--backbone'),
    (['bench', '--repeats', '0'], '--repeats'),
    (['bench', '--amp', 'fp8'], '--amp'),
    (['study', '--jobs', '0'], '--jobs'),
    (['study', '--folds', '5'], '--folds'),
    (['study', '--matrix', 'ablations'], '--matrix'),
    (['study', '--gpus', '-1'], '--gpus'),
    (['study', '--retries', '-1'], '--retries'),
    (['nocommand'], "'nocommand'"),
]


@pytest.mark.parametrize('argv,name', ARGPARSE_CASES, ids=[' '.join(a)[:40] for a, _ in ARGPARSE_CASES])
def test_argparse_rejects(argv, name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(argv, capsys, 2, name)
    assert list(tmp_path.iterdir()) == []                           # nothing written


# ------------------------------------------------------------------ bad values found after parsing (usage, exit 2)

def _train(files, out, *sets):
    "A smoke `train` command (one iteration, should a check ever let it through)."
    root = [] if any(s.startswith('data_root=') for s in sets) else ['--data-root', files['root']]
    return ['train', '--preset', 'smoke', *root, '--out', out, '--set', 'train.max_iters=1',
            *[a for s in sets for a in ('--set', s)]]


@pytest.mark.parametrize('sets,names', [
    (['nokey'], ["'nokey'", 'KEY=VALUE']),
    (['model.bogus=1'], ["unknown model setting 'bogus'"]),
    (['optim.lr=1'], ["section 'optim'"]),
    (['train.base_lr=-1'], ['base_lr=-1']),
    (['model.use_sdpm=maybe'], ["use_sdpm='maybe'"]),
    (['eval.seeds=0'], ['seeds=0']),
    (['eval.multiscale=both'], ["multiscale='both'"]),
    (['cache_features=yes'], ["cache_features='yes'"]),
    (['cache_features=true', 'model.backbone_bn=train'], ["backbone_bn='frozen'"]),
    (['data.train_list=no/such/list.txt'], ["data.train_list='no/such/list.txt'"]),
    (['data.sbd=no/such/folder'], ["data.sbd='no/such/folder'"]),
    (['data_root=5'], ['data_root=5']),
    (['eval.scoring=original'], ["protocol='paper'"]),
    (['model.kshot_strategy=integral', 'model.variant=official'], ["variant='paper'"]),
    # wrong types and non-finite numbers, named with their section (the type each field is annotated with)
    (['train=5'], ['train=5', 'train.KEY=VALUE']),
    (['preset=pascal'], ["'preset=pascal'", '--preset']),
    (['train.seed=-1'], ['train.seed=-1', 'integer >= 0']),
    (['train.seed=abc'], ["train.seed='abc'", 'an integer']),
    (['train.seed=1.5'], ['train.seed=1.5', 'an integer']),
    (['eval.first_seed=abc'], ["eval.first_seed='abc'"]),
    (['eval.workers=-1'], ['eval.workers=-1']),
    (['train.workers=true'], ['train.workers=True', 'an integer']),
    (['train.max_iters=1.5'], ['train.max_iters=1.5']),
    (['train.device=0'], ['train.device=0', 'a string']),
    (['model.device=0'], ["unknown model setting 'device'"]),
    (['model.saam_bins=0.5'], ['model.saam_bins=0.5', 'a list of numbers']),
    (['model.saam_bins=[1, 2.5]'], ['saam_bins entry 2.5', 'whole number']),
    (['model.decoder_bins=[60.5]'], ['decoder_bins entry 60.5']),
    (['model.backbone_weights=5'], ['model.backbone_weights=5', 'a string or null']),
    (['train.base_lr=Infinity'], ['train.base_lr=inf', 'finite']),
    (['model.fg_weight=NaN'], ['model.fg_weight=nan', 'finite']),
    (['model.alpha=NaN'], ['model.alpha=nan', 'finite']),
    (['fold=true'], ['fold=True', 'an integer']),
    # sizes that cannot work: a stride-8 feature map under 2x2
    (['train_size=7'], ['train_size=7', 'at least 9 pixels']),
    (['eval.size=8'], ['eval.size=8', 'at least 9 pixels']),
    (['eval.scales=[4, 65]'], ['eval.scales entry 4']),
])
def test_bad_settings_are_refused_before_anything_is_written(files, sets, names, capsys, tmp_path):
    out = tmp_path / 'run'
    check(_train(files, out, *sets), capsys, 2, *names)
    assert not out.exists()


def test_missing_data_root_names_it(files, capsys, tmp_path):
    check(['train', '--preset', 'smoke', '--data-root', tmp_path / 'nowhere', '--out', tmp_path / 'run'], capsys, 2,
          tmp_path / 'nowhere')


def test_out_under_a_regular_file(files, capsys):
    check(_train(files, files['d'] / 'a_file' / 'run'), capsys, 2, 'a_file')


def test_cache_dir_under_a_regular_file(files, capsys, tmp_path):
    check(_train(files, tmp_path / 'run', f"cache_dir={files['d'] / 'a_file' / 'cache'}"), capsys, 2, 'a_file')
    assert not (tmp_path / 'run').exists()


def test_resume_with_nothing_to_resume(files, capsys, tmp_path):
    check(_train(files, tmp_path / 'run') + ['--resume'], capsys, 2, 'resume', tmp_path / 'run')


@pytest.mark.parametrize('name', ['missing.pth', 'empty.pth', 'text.pth', 'truncated.pth', 'foreign.pth'])
def test_bad_checkpoint_files_are_named(files, name, capsys, tmp_path):
    path = files['d'] / name
    check(['eval', '--preset', 'smoke', '--data-root', files['root'], '--out', tmp_path / 'ev', '--checkpoint', path],
          capsys, 2, path)


@pytest.mark.parametrize('name', ['missing.pth', 'empty.pth', 'text.pth'])
def test_bad_released_checkpoint_files_are_named(files, name, capsys, tmp_path):
    path = files['d'] / name
    check(['eval', '--preset', 'smoke', '--data-root', files['root'], '--out', tmp_path / 'ev', '--released', path],
          capsys, 2, path)


def _predict(files, tmp_path, **kw):
    args = {**dict(checkpoint=files['ckpt'], support=[files['img']], support_mask=[files['lbl']], query=[files['img']],
                   out=tmp_path / 'pred', size=65), **kw}                  # an untrained model records no size
    argv = ['predict']
    for k, v in args.items():
        argv += [f"--{k.replace('_', '-')}", *(v if isinstance(v, list) else [v])]
    return argv


def test_predict_missing_support_image(files, capsys, tmp_path):
    check(_predict(files, tmp_path, support=[tmp_path / 'nope.jpg']), capsys, 2, 'nope.jpg')


def test_predict_mask_count_must_match(files, capsys, tmp_path):
    check(_predict(files, tmp_path, support_mask=[files['lbl'], files['lbl']]), capsys, 2, 'mask')


def test_predict_dataset_only_with_released(files, capsys, tmp_path):
    check(_predict(files, tmp_path, dataset='coco'), capsys, 2, '--dataset')


def test_predict_unreadable_query_image(files, capsys, tmp_path):
    bad = files['d'] / 'text.pth'
    check(_predict(files, tmp_path, query=[bad]), capsys, 2, bad)


def test_study_unknown_run_id(files, capsys, tmp_path):
    check(['study', '--preset', 'smoke', '--dir', tmp_path / 's', '--only', 'no-such-run', '--data-root', files['root']],
          capsys, 2, 'no-such-run')


def test_study_unknown_scheduler(capsys, tmp_path):
    check(['study', '--preset', 'smoke', '--dir', tmp_path / 's', '--scheduler', 'ftp://h:1'], capsys, 2, 'ftp://h:1')
    check(['study', '--preset', 'smoke', '--dir', tmp_path / 's', '--scheduler', 'slurm'], capsys, 2, 'cluster_config=None', 'slurm')


def test_study_bad_override(capsys, tmp_path):
    check(['study', '--preset', 'smoke', '--dir', tmp_path / 's', '--set', 'nokey'], capsys, 2, "'nokey'")
    assert not (tmp_path / 's').exists()


# ------------------------------------------------------------------ nothing the user made or a finished run owns is replaced

def _digest(folder):
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_predict_out_is_the_input_folder(files, capsys, tmp_path):
    "`--out` the folder of the query `x.png` and its support mask `x_mask.png`: refused, every input byte-identical."
    import shutil
    folder = tmp_path / 'photos'; folder.mkdir()
    shutil.copy(files['img'], folder / 'x.jpg'); shutil.copy(files['lbl'], folder / 'x_mask.png')
    before = _digest(folder)
    check(_predict(files, tmp_path, support=[folder / 'x.jpg'], support_mask=[folder / 'x_mask.png'],
                   query=[folder / 'x.jpg'], out=folder), capsys, 2, folder / 'x_mask.png', 'would replace the support mask')
    assert _digest(folder) == before


@pytest.mark.parametrize('extra,names', [
    (['--mask-threshold', '300'], ['mask_threshold=300', '1..255']),
    (['--mask-threshold', '100', '--class-id', '3'], ['exclude each other']),
])
def test_predict_bad_mask_threshold(files, extra, names, capsys, tmp_path):
    check(_predict(files, tmp_path) + extra, capsys, 2, *names)
    assert not (tmp_path / 'pred').exists()


def test_predict_names_the_mask_rule_it_applied(files, capsys, tmp_path):
    import json
    code = main([str(a) for a in _predict(files, tmp_path) + ['--mask-threshold', '128']])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows[0]['support_masks'] == [f"{files['lbl']}: object where >= 128 (mask_threshold)"]


@pytest.fixture(scope='module')
def finished(files, tmp_path_factory):
    "A finished one-iteration smoke run."
    out = tmp_path_factory.mktemp('finished') / 'run'
    assert main([str(a) for a in _train(files, out)]) == 0
    return out


def test_train_into_a_finished_run_without_resume(files, finished, capsys):
    before = _digest(finished)
    check(_train(files, finished), capsys, 2, finished, 'already holds a run', '--resume', '--overwrite')
    assert _digest(finished) == before                                  # last.pth and the log byte-identical


def test_train_resume_and_overwrite_together(files, finished, capsys):
    before = _digest(finished)
    check(_train(files, finished) + ['--resume', '--overwrite'], capsys, 2, 'exclude each other')
    assert _digest(finished) == before


def test_train_overwrite_replaces_the_run(files, finished, capsys, tmp_path):
    import json, shutil
    run = shutil.copytree(finished, tmp_path / 'run')
    shutil.copy(run / 'checkpoints' / 'last.pth', run / 'checkpoints' / 'best.pth')
    assert main([str(a) for a in _train(files, run) + ['--overwrite']]) == 0
    assert 'checkpoints/best.pth' in json.loads(capsys.readouterr().out)['replaced']
    assert not (run / 'checkpoints' / 'best.pth').exists() and (run / 'checkpoints' / 'last.pth').exists()


def test_resume_with_the_data_root_written_another_way(files, finished, tmp_path, monkeypatch):
    "A run trained with a relative data root resumes with the absolute one (and the other way round)."
    import os, shutil
    run = shutil.copytree(finished, tmp_path / 'run')
    monkeypatch.chdir(files['root'].parent)
    relative = os.path.relpath(files['root'])
    argv = [a if a != str(files['root']) else relative for a in map(str, _train(files, run))]
    assert main(argv + ['--resume', '--set', 'train.max_iters=2']) == 0

def test_eval_takes_the_checkpoints_trained_size_and_says_so(files, finished, capsys, tmp_path):
    "A smoke checkpoint (trained at 65 px) evaluated with the embedded preset (129 px) is scored at 65 px, and says so."
    import json
    ckpt = finished / 'checkpoints' / 'last.pth'
    base = ['eval', '--preset', 'embedded', '--data-root', files['root'], '--checkpoint', ckpt, '--set', 'eval.episodes=4',
            '--set', 'eval.workers=0']
    assert main([str(a) for a in base + ['--out', tmp_path / 'a']]) == 0
    summary = json.loads((tmp_path / 'a' / 'eval_summary.json').read_text())
    assert summary['eval_size'] == 65 and 'the checkpoint (trained at 65 px' in summary['eval_size_from']
    assert main([str(a) for a in base + ['--out', tmp_path / 'b', '--set', 'eval.size=97']]) == 0   # told otherwise
    summary = json.loads((tmp_path / 'b' / 'eval_summary.json').read_text())
    assert (summary['eval_size'], summary['eval_size_from']) == (97, 'eval.size=97')

def test_eval_into_a_folder_another_eval_writes(files, capsys, tmp_path):
    "Two evaluations into one --out: the second finds the first's lock (a live process) and is refused."
    import os
    out = tmp_path / 'ev'; out.mkdir()
    (out / '.lock').write_text(str(os.getppid()))
    check(['eval', '--preset', 'smoke', '--data-root', files['root'], '--out', out, '--checkpoint', files['ckpt']],
          capsys, 2, out, f'being written by process {os.getppid()}')
    assert sorted(p.name for p in out.iterdir()) == ['.lock']


# ------------------------------------------------------------------ runtime errors (exit 1) and --debug

def test_runtime_error_is_one_line_with_its_type(files, capsys, monkeypatch):
    import sdaanet.cli as cli
    def broken(*a, **k): raise RuntimeError('the device fell over')
    monkeypatch.setattr(cli, 'smoke', broken)
    err = check(['smoke'], capsys, 1, 'RuntimeError: the device fell over', '--debug')
    assert err.count('\n') == 1


def test_debug_shows_the_traceback(files):
    with pytest.raises(ValueError, match="'nokey'"):
        main(['--debug', 'train', '--out', 'r', '--set', 'nokey'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
@pytest.mark.parametrize('argv', [['smoke', '--size', '65', '--random-weights'], ['bench', '--device', 'cuda', '--size', '65',
                                  '--backbone', 'efficientnet_lite0', '--repeats', '1', '--warmup', '0']])
def test_cuda_without_a_gpu(argv, files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    if argv[0] == 'smoke':
        argv = ['train', '--preset', 'smoke', '--data-root', files['root'], '--out', tmp_path / 'never', '--set',
                'train.device=cuda']
    got, err = run_cli(argv, capsys)
    assert got in (1, 2) and 'CUDA is not available' in err and 'Traceback' not in err, err


def test_help_never_imports_torch():
    "`sdaanet --help` and every command's `--help` parse without loading PyTorch (start-up time: see the README)."
    import subprocess, sys
    code = ("import sys\nfrom sdaanet.cli import main\n"
            "for argv in (['--help'], ['smoke', '--help'], ['data', 'index', '--help'], ['train', '--help'], "
            "['eval', '--help'], ['predict', '--help'], ['bench', '--help'], ['study', '--help']):\n"
            "    try: main(argv)\n    except SystemExit as e: assert e.code == 0, argv\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'pandas', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '[]'


def test_study_override_for_one_run(files, capsys, tmp_path, monkeypatch):
    "`--set RUN_ID:KEY=VALUE` (documented) reaches the study; a RUN_ID that is no run of the study is refused by name."
    check(['study', '--preset', 'smoke', '--dir', tmp_path / 's', '--set', 'no-such-run:train.max_iters=1'],
          capsys, 2, "'no-such-run' is not a run of this study")
    assert not (tmp_path / 's').exists()
    import sdaanet.study
    seen = {}
    monkeypatch.setattr(sdaanet.study, 'study', lambda study_dir, cfg, html: seen.setdefault('cfg', cfg))
    main(['study', '--preset', 'smoke', '--dir', str(tmp_path / 's'), '--set', 'baseline-1shot-separate-fold0:train.max_iters=1'])
    assert seen['cfg'].overrides == ('baseline-1shot-separate-fold0:train.max_iters=1',)


def test_bench_with_a_preset_that_sets_backbone_weights(capsys):
    "`sdaanet bench --preset smoke` (whose model has backbone_weights=None) runs: bench always uses random weights."
    assert main(['bench', '--preset', 'smoke', '--backbone', 'efficientnet_lite0', '--size', '33', '--train-size', '33',
                 '--repeats', '1', '--warmup', '0', '--device', 'cpu', '--only', 'eval']) in (0, None)
    assert '"eval"' in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_study_gpus_without_cuda(capsys, tmp_path):
    "`--gpus 0` on a machine without CUDA is refused (it used to run on the CPU without a word)."
    check(['study', '--preset', 'smoke', '--dir', tmp_path / 's', '--gpus', '0'], capsys, 2, 'gpus=[0]', '0 CUDA device')
    assert not (tmp_path / 's').exists()


def test_study_folder_another_study_writes(capsys, tmp_path):
    "Two studies into one folder: the second finds the first's lock (a live process) and is refused."
    import os
    d = tmp_path / 's'; d.mkdir(); (d / '.lock').write_text(str(os.getppid()))
    check(['study', '--preset', 'smoke', '--dir', d, '--folds', '0'], capsys, 2, f'being written by process {os.getppid()}')
    assert sorted(p.name for p in d.iterdir()) == ['.lock']


def test_predict_threshold_needs_prior_only(files, capsys, tmp_path):
    "`--threshold` only means something with --prior-only; with a trained model it is refused, not ignored."
    check(_predict(files, tmp_path) + ['--threshold', '0.3'], capsys, 2, '--threshold 0.3', '--prior-only')


def test_model_shots_is_refused_naming_the_key_that_sets_it(capsys, tmp_path):
    "`model.shots` would be overwritten by the run's `shots`: an error (exit 2) that names the right key."
    with pytest.raises(SystemExit) as e:
        main(['train', '--preset', 'smoke', '--out', str(tmp_path / 'r'), '--set', 'model.shots=5'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'model.shots=5 cannot take effect' in err and '--set shots=5' in err


@pytest.mark.parametrize('text', ['none', 'null', 'None', 'NULL'])
def test_no_backbone_weights_spelled_as_text(text):
    "`--set model.backbone_weights=none` (or null) means random weights, not a file called 'none'."
    from sdaanet.runs import run_config, parse_overrides
    assert run_config('embedded', **parse_overrides([f'model.backbone_weights={text}'])).model.backbone_weights is None


def test_missing_weights_file_says_what_is_expected(tmp_path):
    from sdaanet.backbones import read_state_dict
    with pytest.raises(FileNotFoundError, match=r"not found: .*w\.pth; expected a state dict file .*none for random"):
        read_state_dict(tmp_path / 'w.pth')
