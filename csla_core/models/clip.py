"""CLIP space: text and image embeddings through an open_clip model.

[paper] CSLA bridges CLIP's joint text/image embedding space and StyleGAN's latent spaces; the
image encoder embeds generated images for data-free training and inversion, the text encoder
embeds prompts for editing and text-to-image.

[ours] Conventions fixed here, once, for the whole project:
- Embeddings are L2-normalised (CLIP's own cosine geometry); shapes [N, D].
- Images come in as NCHW float in [-1, 1] (the generator's range). They are mapped to [0, 1],
  resized to the model's input size (antialiased bicubic when shrinking, like CLIP's PIL
  preprocessing; shortest side then centre crop for non-square inputs) and normalised with the
  model's own mean/std. Skipping that normalisation (as StyleCLIP's CLIP loss does) feeds CLIP
  out-of-distribution inputs, so it is never skipped. Values are not clamped, so gradients flow
  everywhere (latent optimisation needs them).
- Prompts are averaged over a short list of ImageNet-style templates (peers use the 80
  ImageNet templates; a dozen gives almost the same average at a fraction of the cost).
- Nothing is downloaded: the real model is loaded from a local file by the caller
  (``ClipEmbedder.from_pretrained``) and tests use ``build_tiny_clip``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..errors import PromptError, WeightsError

# [ours] A documented subset of the ImageNet prompt templates of Radford et al. (2021), chosen to
# be neutral about photo quality and style so the averaged embedding stays on "a photo of X".
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}.",
    "a good photo of {}.",
    "a close-up photo of {}.",
    "a bright photo of {}.",
    "a cropped photo of {}.",
    "a photo of the {}.",
    "a low resolution photo of {}.",
    "a rendering of {}.",
    "a jpeg corrupted photo of {}.",
    "a blurry photo of {}.",
    "a photo of one {}.",
)
DEFAULT_NEUTRAL_PROMPT = (
    "a face"  # [ours] peers (StyleCLIP global directions, DeltaEdit) use "face"
)
_TEXT_CACHE_SIZE = 512
# open_clip's BPE tokenizer memoises every distinct word it has seen, without a bound: on a public
# server, prompts of never-seen words (random strings, up to session.MAX_PROMPT_CHARS long) would
# grow it for ever. Past this many words it is reset to what it held when loaded.
_TOKENIZER_CACHE_SIZE = 20_000


@dataclass(frozen=True)
class TextEncoding:
    """Text embeddings plus whether any prompt (after templating) hit the context length."""

    embeddings: torch.Tensor  # [N, D], L2-normalised
    truncated: tuple[bool, ...]  # one flag per prompt

    @property
    def any_truncated(self) -> bool:
        return any(self.truncated)


class ClipEmbedder(nn.Module):
    """A frozen open_clip model with the project's text/image conventions (see module doc).

    Build it from any open_clip ``CLIP`` model object; ``from_pretrained`` loads the real
    ``ViT-B-32-quickgelu`` from a local file, ``build_tiny_clip`` makes a small random one.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: object | None = None,
        *,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        use_templates: bool = True,
        neutral_prompt: str = DEFAULT_NEUTRAL_PROMPT,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)  # CLIP is never trained here; gradients only flow through it
        self.tokenizer = tokenizer if tokenizer is not None else open_clip.get_tokenizer("ViT-B-32")
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = image_mean or getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = image_std or getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        if any("{}" not in t for t in templates):
            raise ValueError("every prompt template needs a '{}' placeholder")
        self.templates = tuple(templates)
        self.use_templates = use_templates
        self.neutral_prompt = neutral_prompt
        self.context_length = int(
            getattr(model, "context_length", None) or getattr(self.tokenizer, "context_length", 77)
        )
        self._text_cache: OrderedDict[tuple[str, bool], tuple[torch.Tensor, bool]] = OrderedDict()
        word_cache = getattr(self.tokenizer, "cache", None)
        self._initial_words = dict(word_cache) if isinstance(word_cache, dict) else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        pretrained: str,
        model_name: str = "ViT-B-32-quickgelu",
        device: str | torch.device = "cpu",
        **kwargs: object,
    ) -> ClipEmbedder:
        """Load ``model_name`` with weights from a *local* file ``pretrained`` (no download)."""
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        except (RuntimeError, FileNotFoundError, KeyError) as exc:
            raise WeightsError(f"cannot load CLIP {model_name} from {pretrained!r}: {exc}") from exc
        base = model_name.removesuffix("-quickgelu")
        return cls(model, open_clip.get_tokenizer(base), **kwargs).to(device)  # type: ignore[arg-type]

    def cast(self, dtype: torch.dtype) -> ClipEmbedder:
        """Store the model's weights in ``dtype`` (bf16 for a CPU's native kernels); the pixel
        statistics and the returned embeddings stay float32.

        In bf16, torch's attention projects a batch-first text input through a broadcast
        batched matmul that copies the weight once per token; the text transformer is switched
        to sequence-first, the same maths through plain matrix products
        (docs/performance.md, "Reduced precision on CPU").
        """
        self.model.to(dtype)
        transformer = getattr(self.model, "transformer", None)
        if (
            dtype != torch.float32
            and transformer is not None
            and hasattr(transformer, "batch_first")
        ):
            blocks = getattr(transformer, "resblocks", [])
            if all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
                transformer.batch_first = False
                for block in blocks:
                    block.attn.batch_first = False
        return self

    def store_narrow(self, dtype: torch.dtype = torch.bfloat16) -> ClipEmbedder:
        """Keep the transformers' matrices (the linear layers, the attention's input
        projection and the patch embedding) and the token embeddings (150 M of ViT-B/32's
        151 M weights) in ``dtype``, the matrices widened to float32 each time a layer runs:
        half their memory, float32 maths on weights rounded once. The text tower widens the
        token embeddings it looks up (``_text_features``, open_clip's ``encode_text``); norms,
        positions and projections stay float32."""
        embedding = getattr(self.model, "token_embedding", None)
        if isinstance(embedding, nn.Embedding):
            embedding.to(dtype)
        for module in self.model.modules():
            names = ["weight"] if isinstance(module, (nn.Linear, nn.Conv2d)) else []
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                names.append("in_proj_weight")
            for name in names:
                if not parametrize.is_parametrized(module, name):
                    parametrize.register_parametrization(module, name, _Widened(dtype))
        return self

    def _tower_dtype(self, tower: nn.Module) -> torch.dtype:
        """What a tower computes in: its first linear layer's weight's dtype (bf16 when cast
        so on a CPU, float32 when only stored narrow)."""
        return next(m.weight.dtype for m in tower.modules() if isinstance(m, nn.Linear))

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ text
    def _check_prompt(self, prompt: str) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt is empty: describe the face or the edit in words")
        return " ".join(prompt.split())

    def _bound_word_cache(self) -> None:
        """Reset the tokenizer's per-word memo when it holds more than _TOKENIZER_CACHE_SIZE."""
        word_cache = getattr(self.tokenizer, "cache", None)
        if self._initial_words is None or not isinstance(word_cache, dict):
            return
        if len(word_cache) > _TOKENIZER_CACHE_SIZE:
            word_cache.clear()
            word_cache.update(self._initial_words)

    def _is_truncated(self, text: str) -> bool:
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:  # unknown tokenizer: cannot tell, report not truncated
            return False
        # +2 for the start/end tokens the tokenizer adds around the BPE tokens.
        return len(encode(text)) + 2 > self.context_length

    @torch.no_grad()
    def encode_text_with_info(
        self, prompts: Sequence[str], use_templates: bool | None = None
    ) -> TextEncoding:
        """Prompts -> ``TextEncoding`` ([N, D] normalised, truncation flags). Cached per prompt."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise PromptError("no prompt given")
        templated = self.use_templates if use_templates is None else use_templates
        cleaned = [self._check_prompt(p) for p in prompts]
        missing = [p for p in dict.fromkeys(cleaned) if (p, templated) not in self._text_cache]
        if missing:
            templates = self.templates if templated else ("{}",)
            texts = [t.format(p) for p in missing for t in templates]
            flags = [self._is_truncated(t) for t in texts]
            tokens = self.tokenizer(texts).to(self.device)
            emb = F.normalize(self._text_features(tokens).float(), dim=-1)
            emb = emb.view(len(missing), len(templates), -1)
            # Average the normalised template embeddings, then renormalise (CLIP zero-shot recipe).
            mean = F.normalize(emb.mean(dim=1), dim=-1).cpu()
            for i, p in enumerate(missing):
                trunc = any(flags[i * len(templates) : (i + 1) * len(templates)])
                self._text_cache[(p, templated)] = (mean[i], trunc)
                while len(self._text_cache) > _TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
            self._bound_word_cache()
        entries = [self._text_cache[(p, templated)] for p in cleaned]
        emb = torch.stack([e[0] for e in entries]).to(self.device)
        return TextEncoding(emb, tuple(e[1] for e in entries))

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``model.encode_text(tokens)``, computed on the tokens up to the last end token.

        CLIP's text transformer is causal and its embedding is read at each text's end token,
        so the padding after it never reaches the result: a prompt in its templates is about a
        dozen of the 77 positions, and the rest was 80% of the text tower's time. The steps are
        open_clip's own (``CLIP.encode_text``), on the shortened sequence; a text tower of
        another kind (no causal mask, another pooling) runs whole.
        """
        model = self.model
        if not _is_clip_text_tower(model):
            return model.encode_text(tokens)
        length = int(tokens.argmax(dim=-1).max()) + 1  # the end token has the highest id
        tokens = tokens[:, :length]
        dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(dtype) + model.positional_embedding[:length].to(dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        projection = model.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def encode_text(
        self, prompts: Sequence[str], use_templates: bool | None = None
    ) -> torch.Tensor:
        """Prompts -> [N, D] L2-normalised text embeddings (template-averaged by default)."""
        return self.encode_text_with_info(prompts, use_templates).embeddings

    def neutral_embedding(self) -> torch.Tensor:
        """[D] text embedding of ``neutral_prompt`` (the default source prompt)."""
        return self.encode_text([self.neutral_prompt])[0]

    # ------------------------------------------------------------------ images
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> CLIP input [B, 3, S, S] (resized, mean/std-normalised)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        x = (images.float() + 1.0) * 0.5
        h, w = x.shape[-2:]
        size = self.image_size
        if (h, w) != (size, size):
            scale = size / min(h, w)  # shortest side to `size`, then centre crop (CLIP's recipe)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            x = F.interpolate(
                x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1.0
            )
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top : top + size, left : left + size]
        return (x - self.pixel_mean) / self.pixel_std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, D] L2-normalised. Differentiable w.r.t. ``images``."""
        x = self.preprocess(images.to(self.device))
        # Weights stored narrow are widened one layer at a time, each freed after its use
        # (torch's ``parametrize.cached()`` would save 35 of the 50 ms this adds to a call,
        # but hold the whole tower widened while it runs: 0.35 GB).
        features = self.model.encode_image(x.to(self._tower_dtype(self.model.visual)))
        return F.normalize(features.float(), dim=-1)


class _Widened(nn.Module):
    """A weight stored in a narrower dtype, read as float32 (``ClipEmbedder.store_narrow``)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float()

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor]:
        # A sequence: torch keeps a single stored tensor in the weight's own dtype.
        return (weight.detach().to(self.dtype),)


def _is_clip_text_tower(model: nn.Module) -> bool:
    """The model's text tower is CLIP's: end-token pooling behind a causal mask (a 77 x 77
    comparison, nothing next to the text transformer it guards)."""
    mask = getattr(model, "attn_mask", None)
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not (
        isinstance(mask, torch.Tensor)
        and mask.ndim == 2
        and mask.shape[0] == mask.shape[1]
        and getattr(model, "text_pool_type", None) == "argmax"
        and all(hasattr(model, part) for part in parts)
    ):
        return False
    causal = torch.full(mask.shape, float("-inf"), device=mask.device).triu_(1)
    return torch.equal(mask.float(), causal)


def tiny_clip_config(
    embed_dim: int = 32,
    image_size: int = 32,
    vision_width: int = 64,
    vision_layers: int = 2,
    patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
) -> dict:
    """[ours] open_clip-style config dict of a small ViT CLIP for tests and CPU demos."""
    return {
        "embed_dim": embed_dim,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": image_size,
            "layers": vision_layers,
            "width": vision_width,
            "head_width": 32,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": text_width,
            "heads": max(1, text_width // 32),
            "layers": text_layers,
        },
    }


def build_tiny_clip(
    seed: int = 0,
    embed_dim: int = 32,
    image_size: int = 32,
    *,
    vision_width: int = 64,
    vision_layers: int = 2,
    patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
    **embedder_kwargs: object,
) -> ClipEmbedder:
    """A small random open_clip ViT CLIP (no download; seeded), wrapped in ``ClipEmbedder``.

    The standard CLIP BPE tokenizer (bundled with open_clip, works offline) and the OpenAI
    mean/std are used, so every code path is the real one, only smaller and untrained.
    """
    cfg = tiny_clip_config(
        embed_dim, image_size, vision_width, vision_layers, patch_size, text_width, text_layers
    )
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = open_clip.CLIP(
            embed_dim=cfg["embed_dim"],
            vision_cfg=open_clip.CLIPVisionCfg(**cfg["vision_cfg"]),
            text_cfg=open_clip.CLIPTextCfg(**cfg["text_cfg"]),
            quick_gelu=cfg["quick_gelu"],
        )
    return ClipEmbedder(model, open_clip.get_tokenizer("ViT-B-32"), **embedder_kwargs)  # type: ignore[arg-type]
