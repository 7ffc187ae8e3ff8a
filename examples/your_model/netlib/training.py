"""netlib's training loop: it needs PyTorch Lightning, which a user who only deploys the network does not install."""

import pytorch_lightning as pl  # noqa: F401 - the dependency a deploying user does not have


def fit(*args, **kwargs):  # pragma: no cover - never reached without Lightning
    raise NotImplementedError
