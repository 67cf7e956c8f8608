"""Task heads that transformers has no class for: WikiHop candidate scoring and HotpotQA's
answer span + answer type + supporting-fact sentences.

Both are `LongformerPreTrainedModel`s with the encoder under `longformer.` (transformers' prefix),
so `from_pretrained(<MLM checkpoint>)` loads the encoder and initialises only the new heads, and a
saved checkpoint is a Longformer checkpoint plus a few extra tensors: transformers'
`LongformerModel.from_pretrained` reads its encoder as is.

Why pooled spans rather than one special token per candidate/sentence (the Longformer paper's
choice): a freshly pretrained small model has never seen such markers, and the mean of a
candidate's (or a sentence's) own token states carries what it says from the first step.
Pooling is a (windows, items, seq) weight matrix built by the encoder in training/adapters.py, so
items split by a window cut are pooled over the part each window holds.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from longdoc.components.modeling.model import LongformerModel, LongformerPreTrainedModel

ANSWER_TYPES = ("span", "yes", "no")


def pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(W, L, H) states x (W, N, L) row-normalised weights -> (W, N, H) pooled states."""
    return torch.bmm(weights.to(hidden.dtype), hidden)


class _Scorer(nn.Module):
    """dense -> tanh -> one score, the shape of transformers' classification heads."""

    def __init__(self, hidden: int, dropout: float, out: int = 1):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.tanh(self.dense(self.dropout(x))))
        return self.out_proj(x)


class LongdocForWikiHop(LongformerPreTrainedModel):
    """One score per candidate from the mean state of the candidate's tokens in the prefix
    `<s> query </s> cand_1 </s> ... cand_n </s>` (all global), for every window."""

    def __init__(self, config):
        super().__init__(config)
        self.longformer = LongformerModel(config, add_pooling_layer=False)
        self.candidate_scorer = _Scorer(config.hidden_size, config.hidden_dropout_prob)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        global_attention_mask: torch.Tensor,
        candidate_weights: torch.Tensor,
    ) -> torch.Tensor:
        """Returns (windows, candidates) scores; combining windows is the caller's choice."""
        hidden = self.longformer(
            input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            return_dict=False,
        )[0]
        return self.candidate_scorer(pool(hidden, candidate_weights)).squeeze(-1)


class HotpotOutput(NamedTuple):
    start_logits: torch.Tensor  # (W, L)
    end_logits: torch.Tensor  # (W, L)
    type_logits: torch.Tensor  # (W, 3): span / yes / no, from <s>
    sentence_logits: torch.Tensor  # (W, S): supporting-fact score per sentence slot


class LongdocForHotpotQA(LongformerPreTrainedModel):
    """Answer span (start/end per token), answer type on `<s>`, and a supporting-fact score per
    context sentence from its pooled tokens."""

    def __init__(self, config):
        super().__init__(config)
        self.longformer = LongformerModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.answer_type = _Scorer(
            config.hidden_size, config.hidden_dropout_prob, len(ANSWER_TYPES)
        )
        self.supporting = _Scorer(config.hidden_size, config.hidden_dropout_prob)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        global_attention_mask: torch.Tensor,
        sentence_weights: torch.Tensor,
    ) -> HotpotOutput:
        hidden = self.longformer(
            input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            return_dict=False,
        )[0]
        start, end = self.qa_outputs(hidden).unbind(-1)
        return HotpotOutput(
            start_logits=start,
            end_logits=end,
            type_logits=self.answer_type(hidden[:, 0]),
            sentence_logits=self.supporting(pool(hidden, sentence_weights)).squeeze(-1),
        )
