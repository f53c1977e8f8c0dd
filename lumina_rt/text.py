"""Text conditioning: the released Gemma-2-2B caption encoder (optional, needs `transformers` and its weights).

The released recipe: the system prompt is prepended to the user's prompt, the tokenizer pads on the right to
a multiple of 8 with at most 256 tokens, and the caption features are `hidden_states[-2]` (2304 wide).
"""

from __future__ import annotations

import logging
import os

import torch

from lumina_rt.errors import TextEncoderError

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are an assistant designed to generate high-quality videos with the highest degree of image-text "
    "alignment based on user prompts. <Prompt Start> "
)
MAX_TOKENS = 256
PAD_MULTIPLE = 8


class GemmaTextEncoder:
    """Gemma-2-2B through `transformers`, loaded from a local directory (no download is attempted)."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise TextEncoderError(
                "the Gemma-2-2B text encoder needs the 'transformers' package: pip install 'lumina-rt[text]'"
            ) from None
        if not os.path.isdir(path):
            raise TextEncoderError(
                f"Gemma-2-2B weights not found at {str(path)!r}: pass a local directory holding the model's "
                "config.json, tokenizer and safetensors weights, or pass caption features directly"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True).to(device).eval()
        except OSError as exc:
            raise TextEncoderError(f"cannot load Gemma-2-2B from {str(path)!r}: {exc}") from None
        self.tokenizer.padding_side = "right"
        self.device = torch.device(device)
        self.system_prompt = system_prompt
        self.feature_dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [self.system_prompt + p for p in prompts]
        tokens = self.tokenizer(
            texts,
            padding=True,
            pad_to_multiple_of=PAD_MULTIPLE,
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        out = self.model(input_ids=tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[-2].float(), mask
