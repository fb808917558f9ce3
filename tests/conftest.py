import pytest
import torch

from sdaanet.fakes import random_episode

torch.set_num_threads(2)


def episode(B=1, K=1, H=65, W=None, seed=0, Hs=None, Ws=None):
    "A random episode: query (B,3,H,W), supports (B,K,3,Hs,Ws), masks with 0/1/255 (a 2-pixel ignored border), query mask."
    W, Hs = W or H, Hs or H
    Ws = Ws or (W if Hs == H else Hs)
    return random_episode(B, K, (H, W), support_size=(Hs, Ws), ignore=2, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_episode():
    return episode
