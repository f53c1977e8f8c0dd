"""Text conditioning: the released Gemma-2-2B caption encoder (optional, needs `transformers` and its weights).

The released recipe (Alpha-VLLM/Lumina-Video `generate.py`): `AutoModel` + `AutoTokenizer` with right padding, the
system prompt prepended to every prompt (the negative one too), the batch tokenized with `padding=True,
pad_to_multiple_of=8, max_length=256, truncation=True`; the caption features are `hidden_states[-2]` (2304 wide
for Gemma-2-2B) and the caption mask is the tokenizer's attention mask. The released script runs Gemma in bf16.
"""

from __future__ import annotations

import logging
import os

import torch

from lumina_rt.errors import TextEncoderError
from lumina_rt.thirdparty import import_optional

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are an assistant designed to generate high-quality videos with the highest degree of image-text "
    "alignment based on user prompts. <Prompt Start> "
)
MAX_TOKENS = 256
PAD_MULTIPLE = 8


def import_transformers():
    """The `transformers` module, or TextEncoderError naming the package and the extra that installs it."""
    try:
        return import_optional("transformers")
    except ImportError:
        raise TextEncoderError(
            "the Gemma-2-2B text encoder needs the 'transformers' package, which is not installed: "
            "pip install 'lumina-rt[text]'"
        ) from None


def dtype_kwargs(transformers, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


class GemmaTextEncoder:
    """Gemma-2-2B through `transformers`, loaded from a local directory (no download is attempted).

    `encode(prompts)` returns (cap_feats [B, L, hidden] float32, cap_mask [B, L] int64) on the CPU, L a multiple
    of 8 and at most 256; padded positions have mask 0.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        transformers = import_transformers()
        if not os.path.isdir(path):
            raise TextEncoderError(
                f"Gemma-2-2B weights not found at {str(path)!r}: pass a local directory holding the model's "
                "config.json, tokenizer and safetensors weights, or pass caption features directly"
            )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = transformers.AutoModel.from_pretrained(
                path, local_files_only=True, **dtype_kwargs(transformers, dtype)
            )
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"cannot load Gemma-2-2B from {str(path)!r}: {exc}") from None
        self.model = self.model.to(device).eval()
        self.tokenizer.padding_side = "right"
        self.path = str(path)
        self.device = torch.device(device)
        self.dtype = dtype
        self.system_prompt = system_prompt
        self.feature_dim = int(self.model.config.hidden_size)

    def tokenize(self, prompts: list[str]):
        """The released tokenization of the system-prompted texts (input_ids, attention_mask)."""
        return self.tokenizer(
            [self.system_prompt + p for p in prompts],
            padding=True,
            pad_to_multiple_of=PAD_MULTIPLE,
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenize(prompts)
        mask = tokens.attention_mask.to(self.device)
        out = self.model(input_ids=tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[-2].float().cpu(), tokens.attention_mask.to(torch.int64)
