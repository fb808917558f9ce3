import pytest
import torch

torch.set_num_threads(2)


def episode(B=1, K=1, H=65, W=None, seed=0, Hs=None, Ws=None):
    "A random episode: query (B,3,H,W), supports (B,K,3,Hs,Ws), masks with 0/1/255, query mask."
    W, Hs = W or H, Hs or H
    Ws = Ws or (W if Hs == H else Hs)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 3, H, W, generator=g)
    s = torch.randn(B, K, 3, Hs, Ws, generator=g)
    sm = torch.randint(0, 2, (B, K, Hs, Ws), generator=g)
    sm[..., :2, :] = 255                                     # a border of ignored pixels
    qm = torch.randint(0, 2, (B, H, W), generator=g)
    qm[..., -2:] = 255
    return q, s, sm, qm


@pytest.fixture
def make_episode():
    return episode
