"""Synthetic data for the tests."""
import torch


class RandomEpisodes(torch.utils.data.Dataset):
    "Episodes of a bright square (class 1) on noise, drawn from the global RNGs (so seeded by the trainer)."
    def __init__(self, n: int = 16, size: int = 33, shots: int = 1): self.n, self.size, self.shots = n, size, shots
    def __len__(self): return self.n

    def _pair(self):
        img, mask = torch.randn(3, self.size, self.size) * 0.5, torch.zeros(self.size, self.size, dtype=torch.long)
        y, x = torch.randint(0, self.size // 2, (2,)).tolist(); s = self.size // 3
        img[:, y:y + s, x:x + s] += 2.0; mask[y:y + s, x:x + s] = 1
        return img, mask

    def __getitem__(self, i):
        q, qm = self._pair()
        shots = [self._pair() for _ in range(self.shots)]
        return dict(query_img=q, query_mask=qm, support_imgs=torch.stack([s[0] for s in shots]),
                    support_masks=torch.stack([s[1] for s in shots]), class_id=1, episode=i)


def nan_losses(monkeypatch):
    "Make every loss term NaN from now on (inputs are finite: the model refuses non-finite ones before any loss)."
    import sdaanet.model
    real = sdaanet.model.loss_terms
    monkeypatch.setattr(sdaanet.model, 'loss_terms', lambda *a, **kw: {k: v * float('nan') for k, v in real(*a, **kw).items()})
