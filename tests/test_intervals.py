"""Coverage of the study's 95 % intervals (`sdaanet.stats`) on simulated studies whose truth is known exactly.

A simulated study has the study's shape: 4 folds x 5 training seeds x 300 episodes, 5 classes per fold. The IoU of
seed s's model on episode e of class c is sigmoid(class level + seed effect + episode difficulty + noise): the seed
effect (one per model, plus a smaller one per class) is the seed spread, the difficulty is shared by every model
scored on the episode, the noise is the model's own. The union is drawn independently of the IoU, so a model's
population class IoU is E[intersection] / E[union] = E[IoU], and the true mean class mIoU over seeds is a normal
integral of the sigmoid (Gauss-Hermite quadrature, exact to ~1e-12). Two methods (A better by DELTA logits) are
scored on the same episodes with their own seeds: the difference is paired on episodes, not on seeds.

The t interval (the default) must cover the truth in 93-97 % of the studies, for one model and for the difference;
the percentile bootstrap's coverage is measured on the same studies and printed for the record (it is lower)."""
import time
import numpy as np
import pandas as pd
from sdaanet.stats import bootstrap, interval_arrays

F, S, N, C = 4, 5, 300, 5                       # folds, training seeds, episodes per fold, classes per fold
STUDIES, PERCENTILE_STUDIES, N_BOOT = 1000, 500, 200
SEED_SD, SEED_CLASS_SD, EPISODE_SD, NOISE_SD, DELTA = 0.15, 0.05, 1.2, 0.5, 0.2    # logit scale


def _expected_iou(level, sd):
    "E[sigmoid(level + z)], z ~ N(0, sd^2), elementwise (Gauss-Hermite quadrature)."
    x, w = np.polynomial.hermite_e.hermegauss(80)
    return (1 / (1 + np.exp(-(level[..., None] + sd * x)))) @ (w / w.sum())


def _studies(rng, levels):
    "Simulated studies of each method in `levels` (folds, classes): [(inter, union (n, F, S, N))], cls (n, F, N)."
    cls = rng.integers(0, C, (STUDIES, F, N))
    union = np.broadcast_to(rng.gamma(2.0, 5000.0, (STUDIES, F, 1, N)), (STUDIES, F, S, N))
    difficulty = rng.normal(0, EPISODE_SD, (STUDIES, F, 1, N))
    at_class = np.broadcast_to(cls[:, :, None, :], (STUDIES, F, S, N))
    sides = []
    for level in levels:
        model = level[None, :, None, :] + rng.normal(0, SEED_SD, (STUDIES, F, S, 1)) \
                + rng.normal(0, SEED_CLASS_SD, (STUDIES, F, S, C))                    # each seed's model, per class
        logit = np.take_along_axis(model, at_class, -1) + difficulty + rng.normal(0, NOISE_SD, (STUDIES, F, S, N))
        sides.append((union / (1 + np.exp(-logit)), union))
    return sides, cls


def _folds(side, cls, studies=slice(None), folds=range(F)):
    return [(side[0][studies, f], side[1][studies, f], cls[studies, f]) for f in folds]


def _covers(r, truth):
    return (np.asarray(r['lo']) <= truth) & (truth <= np.asarray(r['hi']))


def _records(side, cls, i):
    "The records of study i of one method, as the report reads them."
    inter, union = side
    f, s, e = np.meshgrid(range(F), range(S), range(N), indexing='ij')
    return pd.DataFrame(dict(fold=f.ravel(), train_seed=s.ravel(), eval_seed=7, episode=e.ravel(),
                             class_id=(10 * f + cls[i][:, None, :].repeat(S, 1)).ravel(),
                             intersection=inter[i].ravel(), union=union[i].ravel()))


def test_t_interval_covers_95_percent_and_the_percentile_bootstrap_less():
    start = time.time()
    rng = np.random.default_rng(2024)
    level = rng.normal(0, 0.8, (F, C))                                     # each class's level, per fold
    sd = np.sqrt(SEED_SD ** 2 + SEED_CLASS_SD ** 2 + EPISODE_SD ** 2 + NOISE_SD ** 2)
    true_a, true_b = _expected_iou(level + DELTA, sd).mean(-1), _expected_iou(level, sd).mean(-1)   # per fold
    (a, b), cls = _studies(rng, [level + DELTA, level])
    cases = {'one model, 4 folds': (dict(a=_folds(a, cls)), true_a.mean()),
             'difference, 4 folds': (dict(a=_folds(a, cls), b=_folds(b, cls)), (true_a - true_b).mean()),
             'one model, fold 0': (dict(a=_folds(a, cls, folds=[0])), true_a[0]),
             'difference, fold 0': (dict(a=_folds(a, cls, folds=[0]), b=_folds(b, cls, folds=[0])), true_a[0] - true_b[0])}
    new, old = {}, {}
    for name, (kw, truth) in cases.items():
        new[name] = _covers(interval_arrays(**kw), truth)
        few = {k: [tuple(x[:PERCENTILE_STUDIES] for x in p) for p in v] for k, v in kw.items()}
        old[name] = _covers(interval_arrays(**few, method='percentile', n_boot=N_BOOT, seed=1), truth).mean()
        print(f'{name}: t interval covers {new[name].mean():.3f} of {STUDIES} studies '
              f'({new[name][:PERCENTILE_STUDIES].mean():.3f} of the first {PERCENTILE_STUDIES}), '
              f'percentile bootstrap {old[name]:.3f} of those {PERCENTILE_STUDIES}')
    for name in cases:
        assert 0.93 <= new[name].mean() <= 0.97, (name, new[name].mean())
        # on the same studies the percentile bootstrap covers less (measured for 5 simulation seeds, every case)
        assert 0 <= old[name] < new[name][:PERCENTILE_STUDIES].mean(), (name, old[name])
    # the report's path (records -> bootstrap) gives the same interval as the arrays
    for i in (0, 1):
        ra, rb = _records(a, cls, i), _records(b, cls, i)
        arrays = interval_arrays(_folds(a, cls, i), _folds(b, cls, i))
        r = bootstrap(ra, rb)
        assert r['paired_episodes'] and r['method'] == 't' and r['seeds'] == S and r['folds'] == F
        np.testing.assert_allclose([r['value'], r['lo'], r['hi'], r['df']],
                                   [float(arrays[k]) for k in ('value', 'lo', 'hi', 'df')], rtol=1e-9)
    print(f'{time.time() - start:.1f} s')
