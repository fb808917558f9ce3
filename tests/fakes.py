"""Test-only fakes. The synthetic episodes themselves are the fakes chapter's (`sdaanet.fakes`: `SquareEpisodes`,
`random_episode`)."""


def nan_losses(monkeypatch):
    "Make every loss term NaN from now on (inputs are finite: the model refuses non-finite ones before any loss)."
    import sdaanet.model
    real = sdaanet.model.loss_terms
    monkeypatch.setattr(sdaanet.model, 'loss_terms', lambda *a, **kw: {k: v * float('nan') for k, v in real(*a, **kw).items()})
