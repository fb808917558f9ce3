"""The study report on a hand-made study folder (no training): registry, metrics.csv, records.csv and seeds.csv of a
few runs. The claims table gives 'undetermined' for a claim whose interval contains 0 and 'reproduced' for a clearly
better method; a collapsed seed is left out of its cell and listed; both report notebooks execute with papermill,
their HTML shows results without code, and the index opens with the claims and links the pages and run notebooks."""
import json
from pathlib import Path
import nbformat
import pandas as pd
from sdaanet.report import (read_study, load_metrics, load_records, measure, fmt, n_seeds, claims_table,
                            paper_vs_measured, ONE_SHOT, KEYS)
from sdaanet.site import build_report

REPORTS = Path(__file__).resolve().parents[1] / 'reports'
PAPER = pd.read_csv(REPORTS / 'paper_tables.csv', dtype={'fold': str, 'value': str})


def _records(run_id, method, hits: dict, n=20):
    "n episodes of fold 0 (classes 1, 2 alternating, union 10); training seed s hits `hits[s]` pixels of each target."
    return pd.DataFrame([dict(run_id=run_id, method=method, fold=0, train_shots=1, kshot_strategy='separate', eval_shots=1,
                              multiscale='single', scoring='episode', train_seed=s, eval_seed=321, episode=e, query_id=e,
                              class_id=1 + e % 2, iou=h / 10, fg_pixels=8, intersection=h, union=10)
                         for s, h in hits.items() for e in range(n)])


RUNS = {  # run_id: method, its records' (method, hits per training seed), seeds.csv's collapsed seeds
    'baseline-1shot-separate-fold0': ('baseline', [('baseline', {0: 3, 1: 5, 2: 4}), ('prior-mask', {-1: 2})], []),
    'saam-1shot-separate-fold0': ('saam', [('saam', {0: 5, 1: 3, 2: 4})], []),                 # same mean, spread
    'sdaanet-1shot-separate-fold0': ('sdaanet', [('sdaanet', {0: 8, 1: 8, 2: 8, 3: 0})], [3]),  # seed 3 collapsed
}


def _study(d: Path) -> Path:
    study = d / 'study'
    rows = []
    for run_id, (method, parts, collapsed) in RUNS.items():
        run = study / 'runs' / run_id
        run.mkdir(parents=True)
        r = pd.concat([_records(run_id, m, hits) for m, hits in parts], ignore_index=True)
        r.to_csv(run / 'records.csv', index=False)
        (r.groupby(KEYS, as_index=False)['iou'].mean().rename(columns={'iou': 'value'})
         .assign(metric='mIoU', class_id='').to_csv(run / 'metrics.csv', index=False))
        seeds = sorted(set(r.train_seed) - {-1})
        pd.DataFrame(dict(train_seed=seeds, iterations=2, stopped_early=False, best_val=0.5, test_miou=0.5,
                          collapsed=[s in collapsed for s in seeds])).to_csv(run / 'seeds.csv', index=False)
        nb = run / 'run.ipynb'
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('secret_run_code = 1')]), nb)
        rows.append(dict(run_id=run_id, method=method, fold=0, train_shots=1, kshot_strategy='separate', status='done',
                         seconds='3.0', error='', out_dir='', notebook=str(nb),
                         collapsed=' '.join(f'seed {s}' for s in collapsed)))
    rows.append(dict(run_id='sdpm-1shot-separate-fold0', method='sdpm', fold=0, train_shots=1, kshot_strategy='separate',
                     status='failed', seconds='1.0', error='boom', out_dir='', notebook='', collapsed=''))
    pd.DataFrame(rows).to_csv(study / 'registry.csv', index=False)
    (study / 'study.json').write_text(json.dumps(dict(preset='hand-made', dataset='embedded', backbone='tiny', folds=[0])))
    return study


def test_helpers_read_the_hand_made_study(tmp_path):
    study = _study(tmp_path)
    meta, registry = read_study(study)
    metrics, records = load_metrics(registry, study), load_records(registry, study)
    assert meta['preset'] == 'hand-made' and len(registry) == 4
    assert set(metrics['method']) == {'baseline', 'prior-mask', 'saam', 'sdaanet'}
    assert fmt(measure(registry, records, 'prior-mask', 0, 1, 1)) == '20.0 [20.0, 20.0]'
    assert measure(registry, records, 'sdpm', 0, 1, 1) == 'sdpm-1shot-separate-fold0: failed (boom)'


def test_collapsed_seed_is_left_out_and_listed(tmp_path):
    study = _study(tmp_path)
    _, registry = read_study(study)
    records = load_records(registry, study)
    cell = measure(registry, records, 'sdaanet', 0, 1, 1)
    assert sorted(cell.train_seed.unique()) == [0, 1, 2] and n_seeds([cell]) == 'n=3'
    assert fmt(cell) == '80.0 [80.0, 80.0]'            # seed 3 (IoU 0) would pull the mean to 60.0
    _, notes = paper_vs_measured(registry, records, PAPER, {}, 'III', {'SD-AANet': dict(ONE_SHOT, method='sdaanet')}, 1)
    assert notes[-1] == 'collapsed, left out: sdaanet-1shot-separate-fold0 seed 3'


def test_claims_verdicts(tmp_path):
    study = _study(tmp_path)
    _, registry = read_study(study)
    claims = claims_table(registry, load_records(registry, study), PAPER).set_index('claim')
    same = claims.loc['+SAAM > baseline']              # equal means, seeds spread: the interval holds 0
    lo, hi = (float(x) for x in same['95 % interval'].strip('[]').split(','))
    assert same['verdict'] == 'undetermined' and lo < 0 < hi and same['measured difference'] == '+0.0'
    assert same['folds'] == '0' and same['paired on episodes'] == 'yes' and same["paper's difference"] == '+0.4'
    better = claims.loc['SD-AANet > baseline']
    assert better['verdict'] == 'reproduced' and better['measured difference'] == '+40.0'
    assert better['seeds per side'] == '3 / 3' and float(better['smallest detectable difference']) > 0
    missing = claims.loc['SD-AANet > +SDPM']
    assert missing['verdict'] == 'not measured' and 'sdpm-1shot-separate-fold0: failed (boom)' in missing['note']


def test_report_html_shows_results_not_code(tmp_path):
    study = _study(tmp_path)
    index = build_report(study, tmp_path / 'html', REPORTS, wall_time=12.0)
    page = index.read_text()
    for name in ('tables.html', 'figures.html', 'runs/baseline-1shot-separate-fold0.html'):
        assert f'href="{name}"' in page and (tmp_path / 'html' / name).exists(), name
    assert 'hand-made' in page and '12.0' in page and 'no notebook' in page and '<td>seed 3</td>' in page
    assert page.index("The paper's claims") < page.index('href="tables.html"')
    assert 'undetermined</td>' in page and 'reproduced</td>' in page and 'Welch-Satterthwaite' in page
    tables = (tmp_path / 'html' / 'tables.html').read_text()
    assert 'Table III' in tables and 'Table V' in tables and '80.0 [80.0, 80.0]' in tables and 'boom' in tables
    assert 'collapsed, left out: sdaanet-1shot-separate-fold0 seed 3' in tables and 'undetermined' in tables
    assert tables.index("The paper's claims") < tables.index('Table I:')
    for code in ('read_study(', 'paper_vs_measured(', 'comparison_table(', 'claims_table('): assert code not in tables, code
    figures = (tmp_path / 'html' / 'figures.html').read_text()
    assert 'Figure 8' in figures and 'Left out' in figures and 'shared_examples(' not in figures
    assert 'secret_run_code' in (tmp_path / 'html' / 'runs' / 'baseline-1shot-separate-fold0.html').read_text()
    assert (study / 'reports' / 'tables.ipynb').exists() and (study / 'reports' / 'figures.ipynb').exists()
