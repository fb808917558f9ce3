"Tests of sdaanet.data on tiny VOC-layout and COCO-json trees that the tests write themselves."
import json, os, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from sdaanet import data
from sdaanet.data import (DataError, DataSpec, UnreadableFile, COCO_CLASSES, TrainEpisodes, EvalEpisodes,
                          load_index, make_episode_list, save_episode_list, load_episode_list, make_dataset,
                          make_loader, pascal_items, coco_items, fold_classes, bench_index, write_synthetic_voc)
from sdaanet.core import IGNORE
from sdaanet.transforms import JointTransform, to_original

H, W, MIN = 24, 32, 50


def label_of(c: int, extra: int | None = None) -> np.ndarray:
    "A 10x10 block of class `c` (100 px), a 3x3 block of `extra` (9 px, under MIN) and a 255 border line."
    lbl = np.zeros((H, W), np.uint8)
    lbl[4:14, 6:16] = c
    if extra: lbl[18:21, 20:23] = extra
    lbl[14, 6:16] = IGNORE
    return lbl


def save_label(path: Path, lbl: np.ndarray, palette: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.fromarray(lbl, 'P')
        im.putpalette(np.random.default_rng(1).integers(0, 256, 768).astype(np.uint8).tolist())
    else:
        im = Image.fromarray(lbl, 'L')
    im.save(path)


def save_image(path: Path, lbl: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    l = lbl.astype(int); rgb = np.stack([l * 11 % 256, l * 37 % 256, 255 - l], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def write_voc(root: Path, labels: dict, train: list, val: list, palette=True, label_dir='SegmentationClassAug') -> Path:
    for i, lbl in labels.items():
        save_label(root / label_dir / f'{i}.png', lbl, palette)
        save_image(root / 'JPEGImages' / f'{i}.jpg', lbl)
    sets = root / 'ImageSets' / 'Segmentation'
    sets.mkdir(parents=True, exist_ok=True)
    (sets / 'train.txt').write_text('\n'.join(train) + '\n')
    (sets / 'val.txt').write_text('\n'.join(val) + '\n')
    return root


def standard_labels() -> tuple[dict, list, list, list]:
    "Three training (SBD-only or VOC train) and three val images per class; returns labels, sbd, voc train, val ids."
    labels, sbd, voc_train, val = {}, [], [], []
    for c in range(1, 21):
        for k in range(3):
            i = f'2008_{c:02d}{k}'
            labels[i] = label_of(c, extra=c % 20 + 1)
            (voc_train if k == 0 else sbd).append(i)
            j = f'2009_{c:02d}{k}'
            labels[j] = label_of(c, extra=c % 20 + 1)
            val.append(j)
    return labels, sbd, voc_train, val


@pytest.fixture
def voc(tmp_path):
    labels, sbd, voc_train, val = standard_labels()
    return write_voc(tmp_path / 'voc', labels, voc_train, val)


def spec(root, tmp_path, **kw) -> DataSpec:
    return DataSpec(**{'name': 'pascal', 'root': str(root), 'min_pixels': MIN, 'cache_dir': str(tmp_path / 'cache'), **kw})


def index(root, tmp_path, **kw):
    return load_index(spec(root, tmp_path, **kw), progress=False)


# ---------------------------------------------------------------- PASCAL lists and index

def test_pascal_lists_follow_the_protocol(voc, tmp_path):
    labels, sbd, voc_train, val = standard_labels()
    # an SBD image that is also in VOC val must not reach the training list; a VOC train id listed twice appears once
    (voc / 'ImageSets/Segmentation/train.txt').write_text('\n'.join(voc_train + voc_train[:2]) + '\n')
    train = [i for i, _, _ in pascal_items(voc, 'train')]
    assert train == sorted(set(sbd) | set(voc_train)) and not set(train) & set(val)
    assert [i for i, _, _ in pascal_items(voc, 'test')] == val


def test_index_applies_fold_and_threshold_rules(voc, tmp_path):
    train, test = index(voc, tmp_path), index(voc, tmp_path, split='test')
    for fold in range(4):
        novel = set(fold_classes(20)[fold])
        assert set(test.class_lists(fold)) == novel and not set(train.class_lists(fold)) & novel
        assert all(len(v) == 3 for v in test.class_lists(fold).values())
        # the 9-pixel `extra` blocks are under the threshold: each image is listed for its big block only
        assert all(len(cs) == 1 for cs in test.queries(fold).values())
    assert len(train.class_lists(0)[6]) == 3 and train.class_names[0] == 'aeroplane'
    test.min_pixels = 9
    assert len(test.class_lists(0)[2]) == 6  # now the 3x3 blocks of class 2 (in class-1 images) count too


def test_palette_and_grayscale_labels_give_the_same_index(tmp_path):
    labels, sbd, voc_train, val = standard_labels()
    pal = write_voc(tmp_path / 'pal', labels, voc_train, val, palette=True)
    gray = write_voc(tmp_path / 'gray', labels, voc_train, val, palette=False)
    # reading the palette PNG through a colour conversion would give other values than the class ids
    with Image.open(next((pal / 'SegmentationClassAug').glob('*.png'))) as im:
        assert not np.array_equal(np.asarray(im.convert('L')), np.asarray(im))
    for split in ('train', 'test'):
        a, b = index(pal, tmp_path, split=split), index(gray, tmp_path, split=split)
        assert a.same_table(b) and a.areas[:, 1:].sum() > 0


def test_warm_index_equals_cold_and_skips_the_scan(voc, tmp_path, monkeypatch):
    cold = index(voc, tmp_path)
    monkeypatch.setattr(data, '_scan', lambda item: pytest.fail('warm load re-read a label'))
    warm = index(voc, tmp_path)
    assert cold.same_table(warm) and cold.images == warm.images and cold.labels == warm.labels


def test_cache_is_rebuilt_when_a_label_changes(voc, tmp_path):
    before = index(voc, tmp_path, split='test')
    k = before.ids.index('2009_010')
    assert before.areas[k, 1] == 100 and before.areas[k, 7] == 0
    save_label(voc / 'SegmentationClassAug' / '2009_010.png', label_of(7))
    after = index(voc, tmp_path, split='test')
    assert after.areas[k, 1] == 0 and after.areas[k, 7] == 100 and not before.same_table(after)


def test_sbd_mat_labels_give_the_same_index_as_the_aug_pngs(voc, tmp_path):
    labels, sbd, voc_train, val = standard_labels()
    raw = tmp_path / 'raw'
    shutil.copytree(voc / 'JPEGImages', raw / 'JPEGImages')
    shutil.copytree(voc / 'ImageSets', raw / 'ImageSets')
    for i in voc_train + val:
        save_label(raw / 'SegmentationClass' / f'{i}.png', labels[i])
    (tmp_path / 'sbd' / 'cls').mkdir(parents=True)
    for i in sbd:
        savemat(tmp_path / 'sbd' / 'cls' / f'{i}.mat', {'GTcls': {'Segmentation': labels[i]}})
    (tmp_path / 'sbd' / 'train.txt').write_text('\n'.join(sbd[::2]))
    (tmp_path / 'sbd' / 'val.txt').write_text('\n'.join(sbd[1::2] + val[:2]))  # SBD val overlaps VOC val
    for split in ('train', 'test'):
        a = index(voc, tmp_path, split=split)
        b = index(raw, tmp_path, split=split, sbd=str(tmp_path / 'sbd'))
        assert a.same_table(b)


def test_explicit_list_file(voc, tmp_path):
    lst = tmp_path / 'list.txt'
    lst.write_text('JPEGImages/2009_010.jpg SegmentationClassAug/2009_010.png\n\n'
                   '/JPEGImages/2009_020.jpg /SegmentationClassAug/2009_020.png\n')
    idx = index(voc, tmp_path, split='test', list_file=str(lst))
    assert idx.ids == ['2009_010', '2009_020'] and idx.areas[1, 2] == 100
    lst.write_text('JPEGImages/2009_010.jpg\n')
    with pytest.raises(DataError, match=r"list.txt:1: expected"):
        index(voc, tmp_path, split='test', list_file=str(lst))


def test_parallel_scan_equals_serial(tmp_path):
    root = write_synthetic_voc(tmp_path / 'syn', 240, size=(48, 40), n_distinct=16)
    items = pascal_items(root, 'train')
    assert len(items) == 210
    serial = data.index_table(items, 20, tmp_path / 'a.npz', workers=1, progress=False)
    parallel = data.index_table(items, 20, tmp_path / 'b.npz', workers=2, progress=False)
    assert serial['ids'] == parallel['ids'] and np.array_equal(serial['areas'], parallel['areas'])


def test_bench_index_reports_times(tmp_path):
    r = bench_index(60, workers=1)
    assert r['indexed'] == 60 and r['cold_s'] > 0 and r['warm_s'] > 0


# ---------------------------------------------------------------- bad input

def test_missing_root_and_subfolders(voc, tmp_path):
    with pytest.raises(DataError, match=r"nowhere not found; expected a VOC 2012 folder with JPEGImages/"):
        index(tmp_path / 'nowhere', tmp_path)
    shutil.rmtree(voc / 'ImageSets')
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/train.txt not found"):
        index(voc, tmp_path)
    shutil.rmtree(voc / 'JPEGImages')
    with pytest.raises(DataError, match=r"voc/JPEGImages not found"):
        index(voc, tmp_path)
    with pytest.raises(DataError, match=r"embedded dataset folder written by"):
        load_index(DataSpec('embedded', str(tmp_path / 'none')), progress=False)


def test_bad_label_values_name_the_file(voc, tmp_path):
    save_label(voc / 'SegmentationClassAug' / '2009_030.png', label_of(30))
    with pytest.raises(DataError, match=r"2009_030.png has values \[30\]; expected class ids 0..20 and 255"):
        index(voc, tmp_path, split='test')


def test_colour_label_is_refused(voc, tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(voc / 'SegmentationClassAug' / '2009_030.png')
    with pytest.raises(DataError, match=r"2009_030.png is a RGB image; expected a palette"):
        index(voc, tmp_path, split='test')


def test_image_and_label_of_different_sizes_name_both(voc, tmp_path):
    save_label(voc / 'SegmentationClassAug' / '2009_030.png', np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DataError, match=r"image .*2009_030.jpg is 24x32 .* label .*2009_030.png is 25x32"):
        index(voc, tmp_path, split='test')


def test_unreadable_image_is_skipped_with_a_warning_then_an_error_in_episodes(voc, tmp_path):
    idx = index(voc, tmp_path, split='test')
    jpg = voc / 'JPEGImages' / '2009_010.jpg'
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\), e.g. cannot read image .*2009_010.jpg"):
        rebuilt = index(voc, tmp_path, split='test')
    assert '2009_010' not in rebuilt.ids and len(rebuilt.skipped) == 1 and len(rebuilt.ids) == len(idx.ids) - 1
    with pytest.warns(UserWarning, match="skipped 1"):  # a warm load reports it again
        index(voc, tmp_path, split='test')
    ds = EvalEpisodes(idx, [dict(episode=0, query='2009_010', class_id=1, supports=['2009_011'])], JointTransform())
    with pytest.raises(UnreadableFile, match=r"cannot read image .*2009_010.jpg"):
        ds[0]


def test_jpeg_with_trailing_bytes_is_kept(voc, tmp_path):
    jpg = voc / 'JPEGImages' / '2009_010.jpg'
    jpg.write_bytes(jpg.read_bytes() + b'trailing metadata')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert '2009_010' in index(voc, tmp_path, split='test').ids


def test_missing_label_is_refused_with_the_list_that_names_it(voc, tmp_path):
    "A file the list names that does not exist is a partial download or a wrong root, not damage to skip."
    os.remove(voc / 'SegmentationClassAug' / '2009_010.png')
    with pytest.raises(DataError, match=r"the pascal test list of .*voc names 0 image\(s\) and 1 label\(s\) that do "
                                        r"not exist, e.g. .*2009_010.png; expected every listed file to exist"):
        index(voc, tmp_path, split='test')


def test_empty_class_list_and_too_many_shots(voc, tmp_path):
    for k in range(3):
        save_label(voc / 'SegmentationClassAug' / f'2009_03{k}.png', label_of(4))
    idx = index(voc, tmp_path, split='test')
    with pytest.raises(DataError, match=r"fold 0: no image has at least 50 pixels of class 3 \(bird\)"):
        idx.class_lists(0)
    idx = index(voc, tmp_path)
    with pytest.raises(DataError, match=r"class 6 \(bus\) has 3 image\(s\), so 2 support\(s\) .* shots=3 needs 4"):
        TrainEpisodes(idx, 0, 3, JointTransform(size=33))
    with pytest.raises(DataError, match=r"shots=5 needs 6"):
        make_episode_list(index(voc, tmp_path, split='test'), 1, 10, 5, seed=0)


def test_bad_spec_values():
    with pytest.raises(ValueError, match=r"name='voc'"):
        DataSpec('voc')
    with pytest.raises(ValueError, match=r"fold=4"):
        DataSpec(fold=4)
    with pytest.raises(ValueError, match=r"shots=0"):
        DataSpec(shots=0)


# ---------------------------------------------------------------- episodes

def test_episode_lists_are_seeded_saved_and_checked(voc, tmp_path):
    idx = index(voc, tmp_path, split='test')
    a, b, c = (make_episode_list(idx, 2, 40, 2, seed=s) for s in (5, 5, 6))
    assert a == b and a != c and [r['episode'] for r in a] == list(range(40))
    novel = set(fold_classes(20)[2])
    for r in a:
        assert r['class_id'] in novel and r['query'] not in r['supports'] and len(set(r['supports'])) == 2
        assert all(r['class_id'] in idx.queries(2)[s] for s in [r['query'], *r['supports']])
    assert len({r['query'] for r in a[:15]}) == 15  # every query image once before any repeats
    path = save_episode_list(tmp_path / 'eps.json', a, dataset='pascal', fold=2, seed=5)
    assert load_episode_list(path) == a
    bad = json.loads(path.read_text()); bad['episodes'][3]['supports'] = []
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"eps.json: episode record 3"):
        load_episode_list(path)
    with pytest.raises(DataError, match=r"image id 'nope' is not in the pascal test list"):
        EvalEpisodes(idx, [dict(episode=0, query='nope', class_id=1, supports=['2009_011'])], JointTransform())


def test_saved_episode_list_replays_identical_batches(voc, tmp_path):
    s = spec(voc, tmp_path, split='test', fold=1, shots=2, size=41)
    idx = load_index(s, progress=False)
    path = save_episode_list(tmp_path / 'eps.json', make_episode_list(idx, 1, 8, 2, seed=321))
    def batches():
        ds = make_dataset(s, load_episode_list(path), index=idx)
        return list(make_loader(ds, batch_size=4, workers=0))
    first, second = batches(), batches()
    assert len(first) == 2
    for x, y in zip(first, second):
        assert x.keys() == y.keys() and x['query_id'] == y['query_id']
        assert all(torch.equal(x[k], y[k]) for k in x if torch.is_tensor(x[k]))
    b = first[0]
    assert b['query_img'].shape == (4, 3, 41, 41) and b['support_masks'].shape == (4, 2, 41, 41)
    assert b['class_id'].tolist() == [r['class_id'] for r in load_episode_list(path)[:4]]
    assert (b['query_mask'] == 1).any() and set(b['support_masks'].unique().tolist()) <= {0, 1, IGNORE}


def test_train_episodes(voc, tmp_path):
    idx = index(voc, tmp_path)
    ds = TrainEpisodes(idx, 0, 2, JointTransform('official', True, 33))
    assert len(ds) == len(idx.queries(0)) == 45
    torch.manual_seed(0); a = ds[7]
    torch.manual_seed(0); b = ds[7]
    assert torch.equal(a['support_imgs'], b['support_imgs']) and a['class_id'] == b['class_id']
    assert a['class_id'] not in fold_classes(20)[0] and a['query_id'] == ds.queries[7]
    for _ in range(10):
        q = ds[3]
        assert (q['support_masks'] == 1).flatten(1).any(1).all()  # every support shows the class
        assert set(q['query_mask'].unique().tolist()) <= {0, 1, IGNORE} and q['support_imgs'].shape == (2, 3, 33, 33)
    batch = next(iter(make_loader(ds, batch_size=3, shuffle=True, workers=0, seed=0)))
    assert batch['query_img'].dtype == torch.float32 and batch['query_mask'].dtype == torch.long
    # supports are distinct images of the class other than the query
    drawn = []
    ds.episode = lambda e, q, c, supports: drawn.append((q, c, supports))
    for i in range(len(ds)): ds[i]
    assert [q for q, _, _ in drawn] == ds.queries
    for q, c, supports in drawn:
        assert len(set(supports)) == 2 and q not in supports and set(supports) <= set(ds.lists[c])
        assert c in ds.pool[q]


def test_paper_evaluation_maps_back_to_the_original_label(voc, tmp_path):
    s = spec(voc, tmp_path, split='test', protocol='paper', size=65)
    ds = make_dataset(s, n_episodes=6, seed=0)
    b = next(iter(make_loader(ds, batch_size=3, workers=0)))
    assert b['query_label_orig'].shape == (3, H, W) and b['orig_hw'].tolist() == [[H, W]] * 3
    assert b['valid_hw'].tolist() == [[49, 65]] * 3
    assert (b['query_mask'][:, 49:] == IGNORE).all() and (b['query_img'][:, :, 49:] == 0).all()
    fg = (b['query_mask'] == 1).float()
    back = to_original(torch.stack([1 - fg, fg], 1), b['valid_hw'], b['orig_hw'])
    for pred, orig in zip(back, b['query_label_orig']):
        p, t = pred.argmax(0) == 1, orig == 1
        assert (p & t).sum() / (p | t).sum() > 0.9


# ---------------------------------------------------------------- COCO

def polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def coco_json(images, anns):
    cats = [{'id': i, 'name': n} for i, n in zip([c for c in range(1, 91) if c not in
             (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)], COCO_CLASSES)]
    return {'images': images, 'annotations': anns, 'categories': cats[::-1]}


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / 'coco'
    (root / 'annotations').mkdir(parents=True)
    for part in ('train2014', 'val2014'):
        images, anns = [], []
        for k in range(3):
            name = f'COCO_{part}_{k:012d}.jpg'
            (root / part).mkdir(exist_ok=True)
            Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(root / part / name)
            images.append({'id': 10 + k, 'file_name': name, 'height': 30, 'width': 40})
        anns += [  # image 10: two person instances (union), a crowd of persons, a toothbrush (id 90 -> class 80)
            {'id': 1, 'image_id': 10, 'category_id': 1, 'segmentation': polygon(2, 2, 10, 10), 'iscrowd': 0, 'area': 100},
            {'id': 2, 'image_id': 10, 'category_id': 1, 'segmentation': polygon(20, 2, 10, 10), 'iscrowd': 0, 'area': 100},
            {'id': 3, 'image_id': 10, 'category_id': 1, 'iscrowd': 1, 'area': 50,
             'segmentation': {'size': [30, 40], 'counts': [30 * 35 + 2, 26, 4, 26, 92]}},
            {'id': 4, 'image_id': 10, 'category_id': 90, 'segmentation': polygon(2, 16, 8, 8), 'iscrowd': 0, 'area': 64},
            # image 11: a bicycle (class 2); image 12 has no annotation
            {'id': 5, 'image_id': 11, 'category_id': 2, 'segmentation': polygon(5, 5, 20, 20), 'iscrowd': 0, 'area': 400}]
        (root / 'annotations' / f'instances_{part}.json').write_text(json.dumps(coco_json(images, anns)))
    return root


def test_coco_masks_and_index(coco, tmp_path):
    items = coco_items(coco, 'test', cache_dir=tmp_path / 'cache', progress=False)
    assert [i for i, _, _ in items] == [f'COCO_val2014_{k:012d}' for k in range(3)]
    lbl = np.asarray(Image.open(items[0][2]))
    assert lbl.shape == (30, 40)
    assert (lbl[3:10, 3:10] == 1).all() and (lbl[3:10, 21:28] == 1).all() and (lbl[17:23, 3:9] == 80).all()
    assert (lbl == 1).sum() >= 2 * 100 and set(np.unique(lbl)) == {0, 1, 80, IGNORE}  # union of both persons
    assert (lbl[2:28, 35:37] == IGNORE).all() and (lbl == IGNORE).sum() == 52  # the crowd region
    assert set(np.unique(np.asarray(Image.open(items[2][2])))) == {0}
    for split in ('interleaved', 'contiguous'):
        s = DataSpec('coco', str(coco), split='test', coco_split=split, min_pixels=50, cache_dir=str(tmp_path / 'cache'))
        idx = load_index(s, progress=False)
        assert idx.class_names[79] == 'toothbrush' and idx.folds == fold_classes(80, split)
        assert idx.areas[0, 1] > 150 and idx.areas[0, 80] == 64 and idx.areas[1, 2] > 300
    img0, img1 = 'COCO_val2014_000000000000', 'COCO_val2014_000000000001'
    assert idx.queries(0) == {img0: [1], img1: [2]} and idx.queries(3) == {img0: [80]}  # contiguous (the last one)
    inter = load_index(DataSpec('coco', str(coco), split='test', min_pixels=50, cache_dir=str(tmp_path / 'cache')),
                       progress=False)
    assert inter.queries(0) == {img0: [1]} and inter.queries(1) == {img1: [2]} and inter.queries(3) == {img0: [80]}
    with pytest.raises(DataError, match=r"fold 0: no image .* class 5 \(airplane\)"):
        inter.class_lists(0)


def test_coco_conversion_resumes(coco, tmp_path):
    items = coco_items(coco, 'train', mask_dir=tmp_path / 'masks', progress=False)
    pngs = [Path(p) for _, _, p in items]
    stamp = {p: p.stat().st_mtime_ns for p in pngs}
    os.remove(pngs[1]); os.remove(tmp_path / 'masks' / '_list.json')  # as if interrupted before the end
    again = coco_items(coco, 'train', mask_dir=tmp_path / 'masks', progress=False)
    assert again == items and pngs[1].exists()
    assert pngs[0].stat().st_mtime_ns == stamp[pngs[0]] and pngs[2].stat().st_mtime_ns == stamp[pngs[2]]
    # a changed json: its masks replace the old ones instead of being resumed from them
    js = coco / 'annotations' / 'instances_train2014.json'
    d = json.loads(js.read_text()); d['annotations'] = d['annotations'][:4]  # drop image 11's bicycle
    js.write_text(json.dumps(d))
    coco_items(coco, 'train', mask_dir=tmp_path / 'masks', progress=False)
    assert np.asarray(Image.open(pngs[1])).max() == 0 and np.asarray(Image.open(pngs[0])).max() == IGNORE


def test_coco_bad_input(coco, tmp_path):
    js = coco / 'annotations' / 'instances_val2014.json'
    d = json.loads(js.read_text())
    del d['annotations'][2]['iscrowd']
    js.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"instances_val2014.json: annotations\[2\] is missing field 'iscrowd'"):
        coco_items(coco, 'test', cache_dir=tmp_path / 'cache', progress=False)
    del d['categories']
    js.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"missing field\(s\) \['categories'\]"):
        coco_items(coco, 'test', cache_dir=tmp_path / 'cache', progress=False)
    d = coco_json([], []); d['categories'] = d['categories'][:79]
    js.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"are not the 80 COCO categories"):
        coco_items(coco, 'test', cache_dir=tmp_path / 'cache', progress=False)
    shutil.rmtree(coco / 'val2014')
    with pytest.raises(DataError, match=r"val2014 not found; expected a COCO 2014 folder"):
        coco_items(coco, 'test', cache_dir=tmp_path / 'cache', progress=False)


def test_run_train_list_builds_the_index_from_that_list(voc, tmp_path):
    "`data.train_list` (the released-list setting) reaches the run's training index, and only those images count."
    import dataclasses
    from sdaanet.runs import run_config, parse_overrides, data_spec
    ids = [f'2008_{c:02d}0' for c in range(1, 11)]                  # one training image of each of classes 1-10
    lst = tmp_path / 'released_train.txt'
    lst.write_text(''.join(f'JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n' for i in ids))
    cfg = run_config('pascal', **parse_overrides([f'data_root={voc}', f'cache_dir={tmp_path / "cache"}',
                                                  f'data.train_list={lst}']))
    assert cfg.to_dict()['data']['train_list'] == str(lst)          # recorded in config.json
    train = load_index(dataclasses.replace(data_spec(cfg, 'train'), min_pixels=MIN), progress=False)
    assert sorted(train.ids) == ids
    assert [len(train.images_of(c)) for c in range(1, 21)] == [1] * 10 + [0] * 10
    full = load_index(dataclasses.replace(data_spec(run_config('pascal', data_root=str(voc), cache_dir=str(tmp_path / 'cache')),
                                                    'train'), min_pixels=MIN), progress=False)
    assert [len(full.images_of(c)) for c in range(1, 21)] == [3] * 20    # the built list: all 60
    test = load_index(dataclasses.replace(data_spec(cfg, 'test'), min_pixels=MIN), progress=False)
    assert len(test.ids) == 60                                          # no test_list: VOC val
    with pytest.raises(ValueError, match="data.test_list='nope.txt': no such file"):
        run_config('pascal', **parse_overrides(['data.test_list=nope.txt']))
    with pytest.raises(ValueError, match='PASCAL-layout'):
        run_config('coco', **parse_overrides([f'data.train_list={lst}']))
