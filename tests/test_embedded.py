"Tests of sdaanet.embedded: a seeded, PASCAL-5i-shaped synthetic benchmark that is a real few-shot problem."
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdaanet.data import DataError, DataSpec, load_index, make_episode_list, fold_classes
from sdaanet.embedded import APPEARANCES, SHAPES, embedded_classes, generate_embedded, render, shape_mask


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp('emb') / 'a', seed=0, n_train=60, n_test=20, workers=1, progress=False)


def files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_generation_is_deterministic_from_the_seed(small, tmp_path):
    again = generate_embedded(tmp_path / 'b', seed=0, n_train=60, n_test=20, workers=1, progress=False)
    assert files(small) == files(again)
    other = generate_embedded(tmp_path / 'c', seed=1, n_train=60, n_test=20, workers=1, progress=False)
    lbl = lambda root: np.asarray(Image.open(root / 'SegmentationClassAug' / 'emb00000.png'))
    assert not np.array_equal(lbl(small), lbl(other))


def test_parallel_generation_matches_render(tmp_path):
    root = generate_embedded(tmp_path / 'p', seed=3, n_train=180, n_test=20, workers=2, progress=False)
    for k in (0, 97, 199):
        img, lbl = render(3, k)
        assert np.array_equal(np.asarray(Image.open(root / 'SegmentationClassAug' / f'emb{k:05d}.png')), lbl)
        decoded = np.asarray(Image.open(root / 'JPEGImages' / f'emb{k:05d}.jpg'), np.int16)
        assert decoded.shape == img.shape and np.abs(decoded - img).mean() < 8  # JPEG noise only


def test_voc_layout_and_reader_for_all_folds(small, tmp_path):
    assert (small / 'ImageSets/Segmentation/train.txt').read_text().split() == [f'emb{k:05d}' for k in range(60)]
    assert len((small / 'ImageSets/Segmentation/val.txt').read_text().split()) == 20
    assert json.loads((small / 'meta.json').read_text())['seed'] == 0
    spec = lambda split, fold: DataSpec('embedded', str(small), split=split, fold=fold, cache_dir=str(tmp_path))
    train, test = load_index(spec('train', 0), progress=False), load_index(spec('test', 0), progress=False)
    assert len(train.ids) == 60 and len(test.ids) == 20 and train.class_names == tuple(c['name'] for c in embedded_classes())
    for fold in range(4):
        lists = train.class_lists(fold)
        assert set(lists) == set(range(1, 21)) - set(fold_classes(20)[fold]) and all(lists.values())
        assert len(train.queries(fold)) > 40


def test_generate_refuses_to_mix_datasets(small, tmp_path):
    stamp = (small / 'JPEGImages' / 'emb00000.jpg').stat().st_mtime_ns
    assert generate_embedded(small, seed=0, n_train=60, n_test=20, workers=1, progress=False) == small
    assert (small / 'JPEGImages' / 'emb00000.jpg').stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(DataError, match=r"holds an embedded dataset with other settings"):
        generate_embedded(small, seed=1, n_train=60, n_test=20)
    (tmp_path / 'other').mkdir(); (tmp_path / 'other' / 'x.txt').write_text('x')
    with pytest.raises(DataError, match=r"other is not empty and holds no embedded dataset"):
        generate_embedded(tmp_path / 'other')
    with pytest.raises(ValueError, match=r"n_train=0"):
        generate_embedded(tmp_path / 'd', n_train=0)
    with pytest.raises(ValueError, match=r"size_range=\(161, 129\)"):
        generate_embedded(tmp_path / 'd', size_range=(161, 129))


def test_classes_are_conjunctions_of_shape_and_appearance():
    classes = embedded_classes()
    assert {(c['shape'], c['appearance']) for c in classes} == {(s, a) for s in SHAPES for a in APPEARANCES}
    for fold in range(4):
        novel = [c for c in classes if c['fold'] == fold]
        base = [c for c in classes if c['fold'] != fold]
        assert [c['class_id'] for c in novel] == list(fold_classes(20)[fold])
        for c in novel:  # neither attribute alone identifies a novel class
            assert sum(b['shape'] == c['shape'] for b in base) == 3
            assert sum(b['appearance'] == c['appearance'] for b in base) >= 3


def test_images_have_several_classes_small_targets_and_hard_negatives():
    classes = embedded_classes()
    n_classes, small, hard = [], 0, 0
    for k in range(60):
        _, lbl = render(0, k)
        assert lbl.max() <= 20
        area = np.bincount(lbl.ravel(), minlength=21)[1:]
        present = [c + 1 for c in np.flatnonzero(area >= 128)]
        n_classes.append(len(present))
        small += int(((area >= 128) & (area < 0.01 * lbl.size)).any())
        hard += any(classes[a - 1][key] == classes[b - 1][key] for a in present for b in present if a < b
                    for key in ('shape', 'appearance'))
    assert np.mean(np.array(n_classes) >= 2) > 0.5 and small >= 3 and hard >= 5


def test_objects_vary_within_a_class():
    rng = np.random.default_rng(0)
    masks = [shape_mask('star', (80, 80), (40.0, 40.0), 50, rng) for _ in range(4)]
    assert len({int(m.sum()) for m in masks}) == 4
    assert all(a.sum() > 0 and (a != b).any() for a, b in zip(masks, masks[1:]))


def test_training_episodes_use_base_classes(small, tmp_path):
    train = load_index(DataSpec('embedded', str(small), cache_dir=str(tmp_path)), progress=False)
    eps = make_episode_list(train, 0, 30, 1, seed=0)  # episodes over base classes of the training index
    assert all(r['class_id'] not in fold_classes(20)[0] for r in eps)
