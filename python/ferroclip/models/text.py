"""Tokenising text the way each family was trained, so text embeddings match the reference.

CLIP pools at the end-of-text token under an attention mask, so padding to the longest
text in the batch gives the same embeddings as padding to 77 and costs less. SigLIP pools
the *last position* and was trained on texts padded to 64 tokens, so it must be padded
to exactly ``max_length``: shorter padding silently changes every embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TextRules", "rules_for"]


@dataclass(frozen=True)
class TextRules:
    padding: str  # "longest" or "max_length"
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"padding": self.padding, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextRules:
        return cls(padding=str(d["padding"]), max_length=int(d["max_length"]))

    def tokenize(self, tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
        enc = tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def rules_for(family: str, text_max_positions: int | None) -> TextRules:
    if family in ("siglip", "siglip2"):
        return TextRules("max_length", min(64, text_max_positions or 64))
    return TextRules("longest", text_max_positions or 77)
