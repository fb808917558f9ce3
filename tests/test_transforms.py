"Tests of sdaanet.transforms: image and mask stay aligned and keep the 0/1/255 convention."
import pytest
import torch

from sdaanet.core import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from sdaanet.transforms import JointTransform, PROTOCOLS, default_size, to_original

H, W = 90, 110


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    "Black image with three red 14x14 squares far from the centre (mask 1 there) and a 255 strip."
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    mask = torch.zeros(H, W, dtype=torch.uint8)
    for y, x in ((6, 8), (6, 86), (68, 20)):
        img[0, y:y + 14, x:x + 14] = 230
        mask[y:y + 14, x:x + 14] = 1
    mask[-3:] = IGNORE
    return img, mask


def red(x: torch.Tensor) -> torch.Tensor:
    "Where a normalised image is red rather than black or grey, at half contrast (the squares, blurred or not)."
    r, g = (x[c] * IMAGENET_STD[c] + IMAGENET_MEAN[c] for c in (0, 1))
    return r - g > 0.45


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_transformed_object_stays_on_its_mask(protocol):
    img, mask = scene()
    t = JointTransform(protocol, train=True, size=97)
    outs = []
    for seed in range(8):
        torch.manual_seed(seed)
        x, m = t(img, mask)
        outs.append((x, m))
        assert iou(red(x), m == 1) > 0.8, seed
    # the check has teeth: the image of one draw against the mask of another does not match
    assert min(iou(red(outs[i][0]), outs[j][1] == 1) for i in range(8) for j in range(8) if i != j) < 0.5


@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('train', [True, False])
def test_masks_keep_zero_one_ignore(protocol, train):
    img, mask = scene()
    for seed in range(4):
        torch.manual_seed(seed)
        x, m = JointTransform(protocol, train, size=65)(img, mask)
        assert x.shape == (3, 65, 65) and x.dtype == torch.float32 and m.shape == (65, 65) and m.dtype == torch.long
        assert set(m.unique().tolist()) <= {0, 1, IGNORE} and {0, 1} <= set(m.unique().tolist())


def test_rotation_pads_image_with_mean_and_mask_with_ignore():
    mean_pixel = [round(255 * m) for m in IMAGENET_MEAN]
    img = torch.tensor(mean_pixel, dtype=torch.uint8)[:, None, None].expand(3, H, W).contiguous()
    mask = torch.zeros(H, W, dtype=torch.uint8)  # no 255 from the input: any 255 comes from the rotation
    padded = 0
    for seed in range(10):
        torch.manual_seed(seed)
        x, m = JointTransform('official', True, size=97)(img, mask)
        if m[0, 0] == IGNORE:
            padded += 1
            assert x[:, 0, 0].abs().max() < 0.03  # the mean colour, normalised (black padding would be about -2)
    assert padded >= 3


def test_paper_training_crop_pads_small_images():
    img, mask = scene()
    torch.manual_seed(0)
    x, m = JointTransform('paper', True, size=161)(img, mask)
    assert x.shape == (3, 161, 161) and (m == IGNORE).sum() >= 161 * 161 - H * W


def test_evaluation_is_deterministic_with_protocol_sizes():
    img, mask = scene()
    assert default_size('official', False) == 473 and default_size('paper', False) == 321 and default_size('paper', True) == 321
    for protocol in PROTOCOLS:
        t = JointTransform(protocol, train=False)
        (a, ma), (b, mb) = t(img, mask), t(img, mask)
        assert torch.equal(a, b) and torch.equal(ma, mb) and a.shape[-1] == t.size


def test_letterbox_maps_back_to_the_original_mask():
    img, mask = scene()
    x, m = JointTransform('paper', train=False, size=97)(img, mask)
    vh, vw = 79, 97  # 90x110 with the longer side at 97
    assert (m[vh:] == IGNORE).all() and (x[:, vh:] == 0).all() and (m[:vh - 3] != IGNORE).all()
    fg = (m == 1).float()
    back = to_original(torch.stack([1 - fg, fg])[None], torch.tensor([[vh, vw]]), torch.tensor([[H, W]]))[0]
    assert back.shape == (2, H, W) and iou(back.argmax(0) == 1, mask == 1) > 0.85
    logits = torch.stack([1 - fg, fg])[None]
    with pytest.raises(ValueError, match=r'valid_hw=\(98, 97\)'):                  # larger than the input
        to_original(logits, torch.tensor([[98, 97]]), torch.tensor([[H, W]]))
    with pytest.raises(ValueError, match=r'orig_hw=\(0, 110\)'):
        to_original(logits, torch.tensor([[vh, vw]]), torch.tensor([[0, W]]))
    with pytest.raises(ValueError, match=r'valid_hw=\[\[79.0, 97.0\]\]'):           # not ints
        to_original(logits, torch.tensor([[vh, vw]], dtype=torch.float), torch.tensor([[H, W]]))
    with pytest.raises(ValueError, match=r'orig_hw=\[\[90, 110, 1\]\]'):            # not a (height, width) pair
        to_original(logits, torch.tensor([[vh, vw]]), torch.tensor([[H, W, 1]]))


def test_bad_inputs():
    img, mask = scene()
    with pytest.raises(ValueError, match=r"protocol='pascal'"):
        JointTransform('pascal')
    with pytest.raises(ValueError, match=r"size=0"):
        JointTransform(size=0)
    with pytest.raises(ValueError, match=r"uint8 tensor \(3, H, W\); got torch.float32"):
        JointTransform()(img.float(), mask)
    with pytest.raises(ValueError, match=r"mask size \(89, 110\) differs from image size \(90, 110\)"):
        JointTransform()(img, mask[1:])
