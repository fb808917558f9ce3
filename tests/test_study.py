"""A smoke study through papermill, the registry and both report notebooks to HTML: one fold, tiny images, two
iterations per training seed, two seeds per run. One run is made to fail (an invalid model setting for that run
only): it is recorded with its error while the other completes; a second call skips both; `retry_failed` runs the
failed one again. The same runs with `--jobs 1` and `--jobs 2` give identical metrics; a run forced to predict
background only is marked collapsed."""
import json, os
import pandas as pd
import pytest
from sdaanet.embedded import generate_embedded
from sdaanet.study import study, study_config, run_study, Registry

GOOD, BAD = 'baseline-1shot-separate-fold0', 'sdaanet-1shot-separate-fold0'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('study')
    root = generate_embedded(d / 'emb', n_train=120, n_test=60, size_range=(65, 81), progress=False)
    return d, root


def smoke(root, **choices):
    "The smoke preset's study on fold 0, on the CPU, over the data at `root`."
    return study_config('smoke', data_root=str(root), folds=(0,), device='cpu', **choices)


@pytest.fixture(scope='module')
def smoke_study(data):
    d, root = data
    extra = [f'cache_dir={d / "cache"}', f'{BAD}:model.alpha=-1']
    here = os.getcwd()
    os.chdir(d)                        # outside the checkout: the run and report notebooks come with the package
    try:
        index = study(d / 'study', smoke(root, jobs=2, only=[GOOD, BAD], overrides=extra), d / 'html', progress=False)
    finally: os.chdir(here)
    return d, root, extra, index


def test_failed_run_is_recorded_and_the_other_completes(smoke_study):
    d, *_ = smoke_study
    reg = Registry(d / 'study' / 'registry.csv').frame().set_index('run_id')
    assert reg.loc[GOOD, 'status'] == 'done' and float(reg.loc[GOOD, 'seconds']) > 0
    assert reg.loc[BAD, 'status'] == 'failed' and 'alpha=-1' in reg.loc[BAD, 'error']
    assert (d / 'study' / 'runs' / BAD / 'run.ipynb').exists()           # the traceback notebook is kept
    run = d / 'study' / 'runs' / GOOD
    metrics = pd.read_csv(run / 'metrics.csv')
    assert set(metrics['method']) == {'baseline', 'prior-mask'}
    miou = metrics.query("metric == 'mIoU'")
    assert sorted(miou['train_seed']) == [-1, 0, 1] and set(miou['eval_seed']) == {321}   # two seeds + the prior mask
    assert miou['value'].between(0, 1).all()
    records = pd.read_csv(run / 'records.csv')
    assert len(records) == 3 * 8 and records['iou'].between(0, 1).all()   # 8 episodes: two models, the prior mask
    seeds = pd.read_csv(run / 'seeds.csv')
    assert list(seeds['train_seed']) == [0, 1] and set(seeds.columns) >= {'iterations', 'best_val', 'collapsed'}
    assert (run / 'figure_data.pt').exists() and (run / 'seed1' / 'checkpoints' / 'last.pth').exists()


def test_html_report_links_tables_figures_and_runs(smoke_study):
    d, _, _, index = smoke_study
    page = index.read_text()
    assert index == d / 'html' / 'index.html'
    for name in ('tables.html', 'figures.html', f'runs/{GOOD}.html', f'runs/{BAD}.html'):
        assert name in page and (d / 'html' / name).exists(), name
    tables = (d / 'html' / 'tables.html').read_text()
    assert 'Table III' in tables and 'Table V' in tables
    meta = json.loads((d / 'study' / 'study.json').read_text())
    assert meta['dataset'] == 'embedded' and meta['failed'] == 1 and meta['done'] == 1


def test_second_call_skips_done_and_failed_runs(smoke_study, capsys):
    d, root, extra, _ = smoke_study
    before = Registry(d / 'study' / 'registry.csv').frame().set_index('run_id')
    reg = run_study(d / 'study', smoke(root, only=[GOOD, BAD], overrides=extra))
    out = capsys.readouterr().out
    assert f'skip {GOOD}: done' in out and f'skip {BAD}: failed' in out
    assert reg.set_index('run_id')['ended'].equals(before['ended'])    # nothing ran again
    reg = run_study(d / 'study', smoke(root, only=[BAD], overrides=extra, retry_failed=True), progress=False)
    row = reg.set_index('run_id').loc[BAD]
    assert row['status'] == 'failed' and row['ended'] != before.loc[BAD, 'ended']


def test_a_source_change_makes_finished_runs_stale(smoke_study, tmp_path, monkeypatch, capsys):
    "A changed module gives another code version: a finished run is queued again, unless keep_stale keeps it."
    import shutil, sdaanet, sdaanet.study as st
    from sdaanet.contract import code_version
    d, root, extra, _ = smoke_study
    reg = Registry(d / 'study' / 'registry.csv').frame().set_index('run_id')
    assert reg.loc[GOOD, 'code_version'] == code_version()
    meta = json.loads((d / 'study' / 'study.json').read_text())
    assert meta['code_version'] == code_version() and meta['code_versions'] == {code_version(): 1}
    assert json.loads((d / 'study' / 'runs' / GOOD / 'params.json').read_text())['code_version'] == code_version()
    pkg = tmp_path / 'sdaanet'; shutil.copytree(os.path.dirname(sdaanet.__file__), pkg)
    (pkg / 'losses.py').write_text((pkg / 'losses.py').read_text().replace('return', 'return  ', 1))   # one edit
    changed = code_version(pkg, os.path.join(os.path.dirname(os.path.dirname(sdaanet.__file__)), 'nbs', 'run.ipynb'))
    assert changed != code_version()
    monkeypatch.setattr(st, 'code_version', lambda: changed)
    kept = run_study(d / 'study', smoke(root, only=[GOOD], overrides=extra, keep_stale=True))
    assert f'skip {GOOD}: done (made by code version {code_version()}, kept by --keep-stale)' in capsys.readouterr().out
    assert kept.set_index('run_id').loc[GOOD, 'ended'] == reg.loc[GOOD, 'ended']
    copy = tmp_path / 'study'; shutil.copytree(d / 'study', copy)     # queue on a copy: a stale run's folder is cleared
    runs = st.study_matrix((0,))
    todo = st._queue([r for r in runs if r['run_id'] == GOOD], Registry(copy / 'registry.csv'), smoke(root, overrides=extra),
                     copy, changed, progress=False)
    assert [p['run_id'] for p in todo] == [GOOD] and todo[0]['code_version'] == changed
    assert Registry(copy / 'registry.csv').get(GOOD)['code_version'] == changed


def test_jobs_do_not_change_the_numbers(data):
    "The same runs one at a time and two side by side (in another order of completion): identical metrics.csv."
    d, root = data
    runs = ['baseline-1shot-separate-fold0', 'sdpm-1shot-separate-fold0', 'sdaanet-1shot-separate-fold0']
    extra = [f'cache_dir={d / "cache"}', 'train.max_iters=4']
    out = {}
    for jobs in (1, 2):
        reg = run_study(d / f'jobs{jobs}', smoke(root, jobs=jobs, only=runs, overrides=extra), progress=False)
        assert (reg['status'] == 'done').all(), reg[['run_id', 'status', 'error']]
        out[jobs] = {r: (d / f'jobs{jobs}' / 'runs' / r / 'metrics.csv').read_text() for r in runs}
    assert out[1] == out[2]


def test_background_only_run_is_marked_collapsed(data):
    "A foreground weight of 1e-4 teaches the model background only: the registry and seeds.csv say collapsed."
    d, root = data
    run = 'saam-1shot-separate-fold0'
    extra = [f'cache_dir={d / "cache"}', 'train.max_iters=30', 'model.fg_weight=0.0001']
    reg = run_study(d / 'collapse', smoke(root, only=[run], overrides=extra), progress=False).set_index('run_id')
    assert reg.loc[run, 'status'] == 'done' and reg.loc[run, 'collapsed'] == '2 of 2 seeds: 0, 1'
    assert pd.read_csv(d / 'collapse' / 'runs' / run / 'seeds.csv')['collapsed'].all()


def test_discrepancy_matrix_measures_every_switch(data):
    "`--matrix discrepancies`: the reference and nine switch runs per fold; every row of the report table measured."
    from sdaanet.report import discrepancy_table, load_records, read_study, DISCREPANCY_ROWS
    d, root = data
    reg = run_study(d / 'disc', smoke(root, jobs=2, matrix='discrepancies', overrides=[f'cache_dir={d / "cache"}']),
                    progress=False)
    assert sorted(reg['run_id']) == sorted(['sdaanet-1shot-separate-fold0'] + [
        f'{m}-1shot-fold0' for m in ('official-sdpm', 'sdpm-teacher', 'sdpm-kd', 'sdpm-reweight', 'lr10x', 'bn-train',
                                     'eval-small', 'paper-protocol', 'from-images')])
    assert (reg['status'] == 'done').all(), reg[['run_id', 'error']]
    _, reg = read_study(d / 'disc')
    records = load_records(reg, d / 'disc')
    proto = records.query("method == 'paper-protocol'")
    assert set(proto['scoring']) == {'resized', 'original'}
    assert len(proto.query("scoring == 'original'")) == len(proto.query("scoring == 'resized'"))   # same episodes
    table = discrepancy_table(reg, records).set_index('switch')
    assert list(table.index) == list(DISCREPANCY_ROWS)
    measured = table['verdict'] != 'not measured'                  # two-iteration models may collapse: then said so
    assert (table.loc[measured, 'folds'] == '0').all()
    for seeds, note in table.loc[measured, ['seeds per side', 'note']].itertuples(index=False):   # 2 seeds, or said why not
        assert seeds == '2 / 2' or 'collapsed, left out' in note, (seeds, note)
    assert table.loc[measured, 'verdict'].isin(['released higher', 'paper higher', 'cannot tell apart']).all()
    assert table.loc[~measured, 'note'].str.contains('every training seed collapsed').all(), table['note'].tolist()
    import torch                                                    # eval.size alone: the very same trained models
    a, b = (torch.load(d / 'disc' / 'runs' / r / 'seed1' / 'checkpoints' / 'last.pth', weights_only=False)['model']
            for r in ('sdaanet-1shot-separate-fold0', 'eval-small-1shot-fold0'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((d / 'disc' / 'runs' / 'bn-train-1shot-fold0' / 'seed0' / 'config.json').read_text())
    assert cfg['model']['backbone_bn'] == 'train' and cfg['cache_features'] is False


def test_train_seeds_reach_the_run_parameters_and_metrics(data, monkeypatch):
    "`sdaanet study --train-seeds` reaches `study()`; the seeds become each run's parameters, its hash and metrics.csv."
    import sdaanet.study
    from sdaanet.cli import main
    seen = {}
    monkeypatch.setattr(sdaanet.study, 'study', lambda study_dir, cfg, html: seen.update(cfg=cfg) or 'index.html')
    main(['study', '--preset', 'smoke', '--train-seeds', '7', '3', '--only', GOOD])
    assert seen['cfg'].train_seeds == (7, 3) and seen['cfg'].only == (GOOD,) and seen['cfg'].preset == 'smoke'
    monkeypatch.undo()
    d, root = data
    run = 'baseline-1shot-separate-fold0'
    reg = run_study(d / 'seeds', smoke(root, only=[run], train_seeds=[7, 3], overrides=[f'cache_dir={d / "cache"}']),
                    progress=False)
    assert (reg['status'] == 'done').all(), reg[['run_id', 'error']]
    folder = d / 'seeds' / 'runs' / run
    assert json.loads((folder / 'params.json').read_text())['train_seeds'] == [7, 3]
    metrics = pd.read_csv(folder / 'metrics.csv').query("method == 'baseline'")
    assert set(metrics['train_seed']) == {7, 3}
    budget = pd.read_csv(folder / 'budget_records.csv')            # the smoke preset scores budgets 1 and 2
    assert set(budget['train_seed']) == {7, 3} and set(budget['budget']) == {1, 2}
    with pytest.raises(ValueError, match=r'train_seeds=\[1, 1\]'):
        smoke(root, only=[run], train_seeds=[1, 1])
