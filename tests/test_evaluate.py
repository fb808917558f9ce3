"""Evaluator: metrics against a plain numpy reference (no-foreground classes, all-255 episodes, missing classes),
merging and count round trips, original-size mapping, the two multi-scale readings (on SDAANet too), the
`evaluate` loop with exact numbers from a stand-in model, and multi-seed aggregation."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdaanet.core import model_config
from sdaanet.evaluate import (EMPTY_IOU, SegMetrics, aggregate_seeds, episode_counts, eval_seeds, evaluate,
                              original_batch, predict, seed_table)
from sdaanet.model import SDAANet
from sdaanet.modules import resize

CLASSES = [6, 7, 8, 9, 10]


# ---------------------------------------------------------------------------------------------- numpy reference
def np_iou(i, u):
    return EMPTY_IOU if u == 0 else i / u


def np_reference(episodes, classes):
    "episodes: (pred, target, class_id) numpy triples -> class IoUs (None: no episode), mIoU, FB-IoU, records."
    cls_i, cls_u, cls_n = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    fb_i, fb_u, records = [0, 0], [0, 0], []
    for pred, target, c in episodes:
        valid = target != 255
        per = []
        for k in (0, 1):
            i = int(np.sum((pred == k) & (target == k) & valid))
            u = int(np.sum(((pred == k) | (target == k)) & valid))
            fb_i[k] += i; fb_u[k] += u; per.append((i, u))
        cls_i[c] += per[1][0]; cls_u[c] += per[1][1]; cls_n[c] += 1
        records.append((c, np_iou(*per[1]), int(np.sum(target == 1)), *per[1]))
    class_iou = {c: np_iou(cls_i[c], cls_u[c]) if cls_n[c] else None for c in classes}
    present = [v for v in class_iou.values() if v is not None]
    return class_iou, sum(present) / len(present), (np_iou(fb_i[0], fb_u[0]) + np_iou(fb_i[1], fb_u[1])) / 2, records


def random_batches(seed, n_batches=6):
    "Batches of random predictions and labels of varying sizes, with the degenerate cases mixed in."
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(n_batches):
        B, H, W = rng.integers(1, 5), rng.integers(3, 12), rng.integers(3, 12)
        pred = rng.integers(0, 2, (B, H, W))
        target = rng.choice([0, 1, 255], size=(B, H, W), p=[0.45, 0.4, 0.15])
        cids = rng.choice(CLASSES[:4], size=B)                  # class 10 never appears: missing
        target[cids == 9] = np.where(target[cids == 9] == 1, 0, target[cids == 9])  # class 9: never foreground
        if b == 2: target[0] = 255                              # an episode full of 255
        if b == 3: pred[0], target[0] = 0, 0                    # empty foreground union
        batches.append((pred, target, cids))
    return batches


def accumulate(batches, first_episode=0):
    m, e = SegMetrics(CLASSES), first_episode
    for pred, target, cids in batches:
        m.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(cids),
                 torch.arange(e, e + len(cids)))
        e += len(cids)
    return m


@pytest.mark.parametrize('seed', range(4))
def test_metrics_match_numpy_reference(seed):
    batches = random_batches(seed)
    m = accumulate(batches)
    ref_cls, ref_miou, ref_fb, ref_rec = np_reference(
        [(p, t, int(c)) for pred, target, cids in batches for p, t, c in zip(pred, target, cids)], CLASSES)
    got = m.class_iou()
    assert got.keys() == ref_cls.keys() and got[10] is None and m.missing == [10]
    for c in CLASSES[:4]:
        assert got[c] == pytest.approx(ref_cls[c], abs=1e-12)
    assert m.miou() == pytest.approx(ref_miou, abs=1e-12) and m.fb_iou() == pytest.approx(ref_fb, abs=1e-12)
    rec = m.records()
    assert list(rec.columns) == ['episode', 'class_id', 'iou', 'fg_pixels', 'intersection', 'union']
    assert rec.episode.tolist() == list(range(len(ref_rec)))
    assert [tuple(r) for r in rec[['class_id', 'fg_pixels', 'intersection', 'union']].values.tolist()] == \
        [(c, fg, i, u) for c, _, fg, i, u in ref_rec]
    np.testing.assert_allclose(rec.iou, [r[1] for r in ref_rec], atol=1e-12)
    assert not rec.isna().any().any() and np.isfinite(rec.iou).all()
    assert m.class_counts.dtype == m.fb_counts.dtype == torch.long


def test_degenerate_episodes_are_finite():
    "All-255 and no-foreground episodes give the documented empty-union value, never NaN."
    m = SegMetrics([1, 2])
    m.update(torch.ones(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255), [1], [0])
    m.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long), [2], [1])
    assert m.class_iou() == {1: EMPTY_IOU, 2: EMPTY_IOU}
    assert m.fb_iou() == pytest.approx((1.0 + EMPTY_IOU) / 2)  # background 16 / 16; foreground union empty
    assert m.records().iou.tolist() == [EMPTY_IOU, EMPTY_IOU]


def test_merge_and_counts_round_trip():
    "Split accumulation + merge (either order) equals one pass; counts() / from_counts() reproduce everything."
    batches = random_batches(7)
    whole = accumulate(batches)
    a = accumulate(batches[:2])
    b = accumulate(batches[2:], first_episode=sum(len(c) for _, _, c in batches[:2]))
    assert torch.equal((a + b).counts(), whole.counts()) and torch.equal((b + a).counts(), whole.counts())
    pd.testing.assert_frame_equal((a + b).records(), whole.records())
    back = SegMetrics.from_counts(CLASSES, whole.counts(), whole.records_list)
    assert back.class_iou() == whole.class_iou() and back.fb_iou() == whole.fb_iou()
    with pytest.raises(ValueError, match='same classes'):
        a + SegMetrics([1, 2])
    with pytest.raises(ValueError, match='flat long tensor of 19'):
        SegMetrics.from_counts(CLASSES, whole.counts().float())


def test_metric_errors():
    m = SegMetrics([1])
    with pytest.raises(ValueError, match='at least one episode'):
        m.fb_iou()
    with pytest.raises(ValueError, match="class_id 3 is not one of the fold's classes"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), [3], [0])
    with pytest.raises(ValueError, match='target has value 2'):
        episode_counts(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match='episodes has 2 entries'):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), [1], [0, 1])
    with pytest.raises(ValueError, match='distinct class ids'):
        SegMetrics([1, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_metrics_on_cuda_equal_cpu():
    batches = random_batches(3)
    cpu, gpu = accumulate(batches), SegMetrics(CLASSES, device='cuda')
    for e, (pred, target, cids) in enumerate(batches):
        gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda(), torch.from_numpy(cids).cuda(),
                   torch.arange(len(cids)).cuda() + 100 * e)
    assert gpu.counts().is_cuda and torch.equal(gpu.counts().cpu(), cpu.counts())


# ---------------------------------------------------------------------------------------------- original size
def test_original_batch_crops_before_resizing():
    """A foreground-minus-background ramp linear in x is resized exactly by bilinear interpolation, so the boundary
    is known: column j of the original reads input column (j + 1/2) * w1 / w0 - 1/2 (half-pixel centres, clamped at
    0). The padding holds large foreground scores that would leak into the result without the crop."""
    h0, w0, h1, w1, S = 30, 50, 6, 10, 12
    scores = torch.zeros(1, 2, S, S)
    scores[0, 1] = 100.0                                                 # padding
    scores[0, 1, :h1, :w1] = 3.3 - torch.arange(w1, dtype=torch.float)   # foreground where x < 3.3
    label = torch.zeros(1, h0, w0, dtype=torch.long)
    pred, _ = original_batch(scores, dict(query_label_orig=label, orig_hw=torch.tensor([[h0, w0]]),
                                          valid_hw=torch.tensor([[h1, w1]])))
    x = np.clip((np.arange(w0) + 0.5) * w1 / w0 - 0.5, 0, None)
    assert pred.shape == (1, h0, w0) and pred.dtype == torch.long
    assert (pred[0].numpy() == (x < 3.3)[None].repeat(h0, 0)).all()


def test_original_batch_pads_and_checks():
    S = 8
    scores = torch.zeros(2, 2, S, S); scores[:, 1] = 1.0                 # foreground everywhere
    label = torch.full((2, 9, 7), 255)
    label[0, :9, :4] = 1; label[1, :3, :7] = 0
    batch = dict(query_label_orig=label, orig_hw=torch.tensor([(9, 4), (3, 7)]), valid_hw=torch.tensor([(8, 4), (3, 8)]))
    pred, target = original_batch(scores, batch)
    assert target is label and (pred[0, :9, :4] == 1).all() and (pred[1, :3, :7] == 1).all()
    assert episode_counts(pred, target)[:, :2].tolist() == [[36, 36], [0, 21]]
    label[1, 5, 5] = 0                                                   # a label outside orig_hw
    with pytest.raises(ValueError, match=r'episode 1: orig_hw=\(3, 7\)'):
        original_batch(scores, batch)
    with pytest.raises(ValueError, match=r'valid_hw=\(0, 4\)'):
        original_batch(scores, dict(batch, valid_hw=torch.tensor([(0, 4), (3, 8)])))


# ---------------------------------------------------------------------------------------------- multi-scale
class Decoder(nn.Module):
    "Logits (-x, x) of the query's first channel, average-pooled by `stride`."
    def __init__(self, stride):
        super().__init__(); self.stride = stride

    def forward(self, q):
        x = F.avg_pool2d(q[:, :1], self.stride)
        return torch.cat([-x, x], 1), None


class Fake(nn.Module):
    "SDAANet's call signature; records each call's sizes, support-mask values and inference mode."
    def __init__(self, stride=1):
        super().__init__()
        self.decoder, self.weight, self.calls = Decoder(stride), nn.Parameter(torch.zeros(())), []

    def forward(self, query_img, support_imgs, support_masks, query_mask=None, return_maps=False, features=None):
        assert query_mask is None, 'the evaluator must not pass the query mask'
        self.calls.append(dict(size=tuple(query_img.shape[-2:]), support_size=tuple(support_imgs.shape[-2:]),
                               mask_values=set(support_masks.unique().tolist()), training=self.training,
                               inference=torch.is_inference_mode_enabled()))
        return {'logits': resize(self.decoder(query_img)[0], query_img.shape[-2:])}


class Wrapper(nn.Module):
    "Like DistributedDataParallel: the model under `.module`."
    def __init__(self, module):
        super().__init__(); self.module = module

    def forward(self, *args, **kw):
        return self.module(*args, **kw)


def fake_episode(H=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 2, (1, 2, H, H), generator=g); masks[..., :3, :] = 255
    return dict(query_img=torch.randn(1, 3, H, H, generator=g), support_imgs=torch.randn(1, 2, 3, H, H, generator=g),
                support_masks=masks)


def test_paper_multiscale_reads_decoder_logits():
    "The literal reading, by hand from the feature-resolution logits; also through a DDP-like wrapper."
    ep, model = fake_episode(), Fake(stride=8)
    feat = Decoder(8)(ep['query_img'])[0]
    want = resize(resize(resize(feat, (321, 321)).softmax(1), (473, 473)) + resize(feat, (473, 473)).softmax(1),
                  (24, 24))
    torch.testing.assert_close(predict(model, ep, 'paper'), want)
    torch.testing.assert_close(predict(Wrapper(model), ep, 'paper'), want)
    assert len(model.calls) == 2 and all(c['size'] == (24, 24) for c in model.calls)
    assert not model.decoder._forward_hooks                               # the hook is removed


def test_pyramid_runs_each_scale():
    ep, model = fake_episode(), Fake(stride=4)
    scores = predict(model, ep, 'pyramid', scales=(16, 32))
    assert [(c['size'], c['support_size']) for c in model.calls] == [((16, 16), (16, 16)), ((32, 32), (32, 32))]
    assert all(c['mask_values'] <= {0, 1, 255} and 255 in c['mask_values'] for c in model.calls)
    want = sum(resize(resize(Decoder(4)(resize(ep['query_img'], (s, s)))[0], (s, s)).softmax(1), (24, 24))
               for s in (16, 32))
    torch.testing.assert_close(scores, want)
    with pytest.raises(ValueError, match="multiscale='both'"):
        predict(model, ep, 'both')
    with pytest.raises(ValueError, match='scales entry'):
        predict(model, ep, 'pyramid', scales=(0,))
    with pytest.raises(ValueError, match='needs a model with a `decoder`'):
        predict(nn.Linear(1, 1), ep, 'paper')


@pytest.fixture(scope='module')
def sdaanet():
    torch.manual_seed(0)
    return SDAANet(model_config('embedded', backbone_weights=None)).eval()


def test_multiscale_on_sdaanet(sdaanet):
    """On the real model, one scale equal to the input size reduces both readings to the softmax of the plain
    logits: the hook reads the decoder's logits that the model upsamples."""
    ep = fake_episode(H=33)
    with torch.inference_mode():
        single = predict(sdaanet, ep).softmax(1)
        torch.testing.assert_close(predict(sdaanet, ep, 'paper', scales=(33,)), single)
        torch.testing.assert_close(predict(sdaanet, ep, 'pyramid', scales=(33,)), single)


# ---------------------------------------------------------------------------------------------- evaluate
def batch(signs, labels, cids, eps, **extra):
    "Episodes whose stand-in prediction is `signs > 0`."
    q = torch.tensor(signs, dtype=torch.float)[:, None].expand(-1, 3, -1, -1)
    B, H, W = q.shape[0], *q.shape[-2:]
    return dict(query_img=q, query_mask=torch.tensor(labels), support_imgs=torch.zeros(B, 1, 3, H, W),
                support_masks=torch.ones(B, 1, H, W, dtype=torch.long), class_id=torch.tensor(cids),
                episode=torch.tensor(eps), **extra)


def test_evaluate_exact_numbers():
    """Class 1: 1/3 and 3/3 (one 255 pixel) -> 4/6; class 2: an empty union; class 4: no episode.
    Background: intersection 1 + 0 + 4 over union 3 + 0 + 4."""
    batches = [batch([[[1, -1], [1, -1]], [[1, 1], [1, 1]]], [[[1, 1], [0, 0]], [[1, 1], [255, 1]]], [1, 1], [0, 1],
                     query_id=['a', 'b']),
               batch([[[-1, -1], [-1, -1]]], [[[0, 0], [0, 0]]], [2], [2], query_id=['c'])]
    model = Fake().train()
    r = evaluate(model, batches, classes=[1, 2, 4])
    assert r.class_iou == {1: 4 / 6, 2: 1.0, 4: None} and r.missing == [4]
    assert r.miou == pytest.approx((4 / 6 + 1) / 2) and r.fb_iou == pytest.approx((5 / 7 + 4 / 6) / 2)
    assert r.records[['episode', 'class_id', 'query_id', 'fg_pixels', 'intersection', 'union']].values.tolist() == \
        [[0, 1, 'a', 2, 1, 3], [1, 1, 'b', 3, 3, 3], [2, 2, 'c', 0, 0, 0]]
    assert r.records.iou.tolist() == [1 / 3, 1.0, 1.0]
    assert all(not c['training'] and c['inference'] for c in model.calls) and model.training
    assert r.summary() == dict(class_iou={'1': 4 / 6, '2': 1.0, '4': None}, miou=r.miou, fb_iou=r.fb_iou,
                               missing=[4], n_episodes=3)


def test_evaluate_original_scoring():
    """Input 4 x 4 holding a 3 x 6 original in its top 2 x 4 (rows 2-3 padding with a large foreground score that
    the crop must drop). Resized back, the foreground-minus-background score of column j is 2 * s(j * 3 / 5) with
    s = 1 on columns 0-1 and -1 on 2-3, positive for j = 0, 1, 2. The label has 5 foreground pixels, all predicted;
    union 9. Resized scoring of the same batch reads query_mask instead."""
    signs = [[[1, 1, -1, -1], [1, 1, -1, -1], [5, 5, 5, 5], [5, 5, 5, 5]]]
    orig = torch.full((1, 4, 7), 255)
    orig[0, :3, :6] = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 255, 0, 0], [0, 0, 0, 0, 0, 0]])
    b = batch(signs, [[[1, 1, 0, 0], [1, 1, 0, 0], [255] * 4, [255] * 4]], [3], [0], query_label_orig=orig,
              orig_hw=torch.tensor([[3, 6]]), valid_hw=torch.tensor([[2, 4]]))
    r = evaluate(Fake(), [b], classes=[3], scoring='original')
    assert r.records[['fg_pixels', 'intersection', 'union']].values.tolist() == [[5, 5, 9]]
    assert r.class_iou == {3: 5 / 9}
    assert evaluate(Fake(), [b], classes=[3]).class_iou == {3: 1.0}
    with pytest.raises(KeyError, match='query_label_orig'):
        evaluate(Fake(), [{k: v for k, v in b.items() if k != 'query_label_orig'}], classes=[3], scoring='original')


def test_evaluate_sdaanet_and_errors(sdaanet):
    "The real model through the loop (both scorings agree when the input is the original); clear errors."
    ep = fake_episode(H=33, seed=1)
    b = dict(ep, query_mask=torch.randint(0, 2, (1, 33, 33)), class_id=torch.tensor([1]), episode=torch.tensor([0]))
    b.update(query_label_orig=b['query_mask'], orig_hw=torch.tensor([[33, 33]]), valid_hw=torch.tensor([[33, 33]]))
    res, orig = evaluate(sdaanet, [b], [1]), evaluate(sdaanet, [b], [1], scoring='original')
    assert 0 <= res.miou <= 1 and res.class_iou == orig.class_iou and not sdaanet.training
    with pytest.raises(ValueError, match="scoring='label'"):
        evaluate(sdaanet, [b], [1], scoring='label')
    with pytest.raises(KeyError, match=r"missing \['query_mask'\]"):
        evaluate(sdaanet, [{k: v for k, v in b.items() if k != 'query_mask'}], [1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_evaluate_moves_batches_to_the_model_device():
    b = batch([[[1, -1], [1, -1]]], [[[1, 1], [0, 0]]], [1], [0])
    r = evaluate(Fake().cuda(), [b], classes=[1])
    assert r.class_iou == {1: 1 / 3} and r.metrics.counts().device.type == 'cpu'


# ---------------------------------------------------------------------------------------------- seeds
def test_aggregate_seeds_against_numpy():
    rng = np.random.default_rng(0)
    seeds = eval_seeds()
    assert seeds == [321, 322, 323, 324, 325]
    vals = rng.random((5, 4))
    results = {}
    for s, v in zip(seeds, vals):
        class_iou = {'1': v[0], '2': v[1] if s != 323 else None}                 # class 2 missing in one seed
        results[s] = dict(class_iou=class_iou, miou=v[2], fb_iou=v[3])
    rows, summary = aggregate_seeds(results)
    assert len(rows) == 5 * 4 - 1 and list(rows.columns) == ['seed', 'metric', 'class_id', 'value']
    assert rows.groupby('seed').size().to_dict() == {321: 4, 322: 4, 323: 3, 324: 4, 325: 4}
    got = {(m, None if pd.isna(c) else int(c)): (mu, sd, n) for m, c, mu, sd, n in summary.values.tolist()}
    want = {('IoU', 1): vals[:, 0], ('IoU', 2): vals[[0, 1, 3, 4], 1], ('mIoU', None): vals[:, 2],
            ('FB-IoU', None): vals[:, 3]}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx((v.mean(), v.std(ddof=1), len(v)))
    assert not summary[['mean', 'std']].isna().any().any()
    with pytest.raises(ValueError, match='results is empty'):
        seed_table({})
