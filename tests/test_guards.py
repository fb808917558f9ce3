"""The checks before a pascal/coco run trains: what would waste a GPU day is refused first, by name (see the
preflight section of the runs notebook and the missing-files check of the data notebook)."""
import os, re, shutil
from pathlib import Path

import pytest
import torch

from sdaanet import runs
from sdaanet.data import COCO_LAYOUT, VOC_LAYOUT, DataError, DataSpec, load_index, write_synthetic_voc
from sdaanet.runs import DiskSpaceError, preflight, run_config, run_train


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    """200 labels of 240 x 180 (ellipses above pascal's 2 x 32 x 32 pixels): 50 test images, at least 3 of each
    novel class of fold 0 (class 2: 5), and 150 training images, at least 8 of each base class."""
    return write_synthetic_voc(tmp_path_factory.mktemp('guards') / 'voc', 200, size=(240, 180), n_distinct=40,
                               val_share=0.25)


def pascal(voc, tmp_path, weights=None, **kw):
    "A pascal run on `voc` (default: random weights, no file to find) with its caches under `tmp_path`."
    return run_config('pascal', data_root=str(voc), cache_dir=str(tmp_path / 'cache'), model={'backbone_weights': weights}, **kw)


def small_voc(root: Path) -> Path:
    return write_synthetic_voc(root, 40, size=(64, 48), n_distinct=8)


# ------------------------------------------------------------------ 1. a list naming files that do not exist

def test_listed_files_that_do_not_exist_are_counted_and_named(tmp_path):
    root = small_voc(tmp_path / 'voc')
    val = (root / 'ImageSets/Segmentation/val.txt').read_text().split()
    for i in val[:2]: os.remove(root / 'JPEGImages' / f'{i}.jpg')
    os.remove(root / 'SegmentationClassAug' / f'{val[3]}.png')
    (root / 'JPEGImages' / f'{val[4]}.jpg').write_bytes(b'not a JPEG')       # there but unreadable: skipped
    spec = DataSpec('pascal', str(root), split='test', min_pixels=50, cache_dir=str(tmp_path / 'cache'))
    first = ', '.join([str(root / 'JPEGImages' / f'{val[0]}.jpg'), str(root / 'JPEGImages' / f'{val[1]}.jpg'),
                       str(root / 'SegmentationClassAug' / f'{val[3]}.png')])
    with pytest.raises(DataError, match=re.escape(f"the pascal test list of {root} names 2 image(s) and 1 label(s) that "
                                                  f"do not exist, e.g. {first}; expected every listed file to exist")):
        load_index(spec, progress=False)
    assert len(load_index(DataSpec('pascal', str(root), split='train', min_pixels=50, cache_dir=str(tmp_path / 'cache')),
                          progress=False).ids) == 35                                   # the training list is whole


def test_sbd_list_naming_a_missing_mat_is_refused(tmp_path):
    root = small_voc(tmp_path / 'voc')
    (root / 'SegmentationClassAug').rename(root / 'SegmentationClass')
    (tmp_path / 'sbd' / 'cls').mkdir(parents=True)
    (tmp_path / 'sbd' / 'train.txt').write_text('2011_000001\n'); (tmp_path / 'sbd' / 'val.txt').write_text('')
    spec = DataSpec('pascal', str(root), min_pixels=50, sbd=str(tmp_path / 'sbd'), cache_dir=str(tmp_path / 'cache'))
    with pytest.raises(DataError, match=r"the pascal train list of .* names 1 image\(s\) and 1 label\(s\) that do not "
                                        r"exist, e.g. .*2011_000001.jpg, .*sbd/cls/2011_000001.mat;"):
        load_index(spec, progress=False)


# ------------------------------------------------------------------ 2. a data root without the expected folders

@pytest.mark.parametrize('remove, missing', [('JPEGImages', 'JPEGImages'), ('SegmentationClassAug', 'SegmentationClassAug')])
def test_voc_root_without_a_folder_names_it_and_the_layout(tmp_path, remove, missing):
    root = small_voc(tmp_path / 'voc')
    shutil.rmtree(root / remove)
    spec = DataSpec('pascal', str(root), split='test', cache_dir=str(tmp_path / 'cache'))      # and no sbd
    with pytest.raises(DataError, match=re.escape(f"{root / missing} not found") + ".*" + re.escape(f"expected {VOC_LAYOUT}")):
        load_index(spec, progress=False)


def test_coco_root_without_the_annotations_names_the_json_and_the_layout(tmp_path):
    for part in ('train2014', 'val2014'): (tmp_path / 'coco' / part).mkdir(parents=True)
    spec = DataSpec('coco', str(tmp_path / 'coco'), split='test', cache_dir=str(tmp_path / 'cache'))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'coco' / 'annotations' / 'instances_val2014.json'} not found; "
                                                  f"expected {COCO_LAYOUT}")):
        load_index(spec, progress=False)


# ------------------------------------------------------------------ 3. too few test images for the shots

def test_too_few_test_images_for_the_shots_fail_before_training(voc, tmp_path):
    "Five shots: enough base-class images to train on, not enough of novel class 2 to test: refused before training."
    cfg = pascal(voc, tmp_path, shots=5)
    with pytest.raises(DataError, match=r"pascal test fold 0: class 2 \(bicycle\) has 5 image\(s\), so 4 support\(s\) "
                                        r"besides the query; shots=5 needs 6"):
        run_train(cfg, tmp_path / 'run', progress=False)
    assert not (tmp_path / 'run').exists()                                            # nothing written, nothing built


# ------------------------------------------------------------------ the backbone weights

def test_missing_backbone_weights_say_where_the_file_goes(voc, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=re.escape(f"backbone weights not found: {tmp_path / 'r50.pth'}")):
        preflight(pascal(voc, tmp_path, str(tmp_path / 'r50.pth')), tmp_path / 'run')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))            # an empty torchvision cache
    with pytest.raises(FileNotFoundError, match=re.escape(f"ImageNet weights for resnet50 not found at {tmp_path / 'hub'}")
                       + ".*Copy torchvision's file"):
        preflight(pascal(voc, tmp_path, 'imagenet'), tmp_path / 'run')
    assert preflight(pascal(voc, tmp_path, 'stand-in'), tmp_path / 'run')['weights'] is None


# ------------------------------------------------------------------ 4. an output folder on a full disk

def test_full_disk_names_the_folder_and_the_gib(voc, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, 'free_bytes', lambda folder: 100 * 2**20)
    out = tmp_path / 'runs' / 'fold0'
    with pytest.raises(DiskSpaceError, match=re.escape(f"{out}: 0.10 GiB free; expected at least ") + r"\d+\.\d\d GiB "
                                             r"\(1\.5 x the \d+\.\d\d GiB of checkpoints"):
        preflight(pascal(voc, tmp_path), out)
    assert not out.exists()


# ------------------------------------------------------------------ 5. a good configuration

def test_good_config_passes_and_says_what_it_checked(voc, tmp_path):
    got = preflight(pascal(voc, tmp_path, train={'select': 'best-test'}), tmp_path / 'run')
    assert got['splits'] == {'test': dict(images=50, fewest_per_class=3, needed=2),
                             'train': dict(images=150, fewest_per_class=8, needed=2)}
    assert got['weights'] is None and got['cache_bytes'] == 0 and list(got['free_bytes']) == [str(tmp_path / 'run')]
    last, best = got['checkpoint_bytes']['last.pth'], got['checkpoint_bytes']['best.pth']
    assert 150e6 < best < last < 300e6                     # ResNet-50 and the head (180 MB), SGD momentum of the head


def test_estimates_match_what_a_run_writes(voc, tmp_path):
    "The checkpoint and feature cache sizes of a smoke run on the pascal tree, within 10 % of the files written."
    cfg = run_config('smoke', dataset='pascal', data_root=str(voc), cache_dir=str(tmp_path / 'cache'), train_size=65,
                     cache_features=True, train=dict(max_iters=1, batch_size=2, select='best-test', checkpoint_every=1),
                     eval=dict(episodes=2, size=65, workers=0))
    before = preflight(cfg, tmp_path / 'run')
    run_train(cfg, tmp_path / 'run', progress=False)
    for name, size in before['checkpoint_bytes'].items():
        assert size == pytest.approx((tmp_path / 'run' / 'checkpoints' / name).stat().st_size, rel=0.1), name
    written = sum(p.stat().st_size for p in (tmp_path / 'cache').glob('features-*.pt'))
    assert before['cache_bytes'] == pytest.approx(written, rel=0.1)
    assert preflight(cfg, tmp_path / 'run')['cache_bytes'] == 0                         # built: a rerun reuses them


# ------------------------------------------------------------------ 6. too few validation images for the shots

def test_too_few_validation_images_name_the_validation_split(voc, tmp_path):
    "select='val' with a small held-out share: the errors name the validation split they checked, not 'train'."
    cfg = pascal(voc, tmp_path, train={'select': 'val', 'val_fraction': 0.3})           # 45 of 150 images held out
    with pytest.raises(DataError, match=r"^pascal val fold 0: class \d+ \(\w+\) has 1 image\(s\), .*shots=1 needs 2$"):
        preflight(cfg, tmp_path / 'run')
    cfg = pascal(voc, tmp_path, train={'select': 'val', 'val_fraction': 0.05})          # 8 held out: classes without any
    with pytest.raises(DataError, match=r"^pascal val fold 0: no image has at least 2048 pixels of class 6 \(bus\)"):
        preflight(cfg, tmp_path / 'run')
