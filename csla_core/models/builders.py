"""Random and tiny models, built once here for every caller: full-size random weights
(development, tests, benchmarks) and the tiny CPU models of the tests and demos.

Seeded builds never disturb the caller's random state.
"""

from __future__ import annotations

import torch

from .clip import ClipEmbedder, build_tiny_clip
from .e4e import Encoder4Editing, EncoderConfig
from .mappers import CSLAMappers, mapper_config_for
from .stylegan2 import Generator, GeneratorConfig, NoiseInjection

# QuickGELU is what OpenAI's CLIP was trained with: plain 'ViT-B-32' (GELU) gives other embeddings.
CLIP_MODEL_NAME = "ViT-B-32-quickgelu"
CLIP_TOKENIZER_NAME = "ViT-B-32"


def seeded_build(seed: int, build):
    """Build a module from a fixed seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def random_models(seed: int, size: int) -> tuple[Generator, Encoder4Editing, torch.Tensor]:
    generator = seeded_build(seed, lambda: Generator(GeneratorConfig(size=size)))
    # Untrained noise strengths are zero, which would make every noise mode look the same;
    # trained models have non-zero ones, so give them a typical value.
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, NoiseInjection):
                module.weight.fill_(0.1)
    encoder = seeded_build(seed + 1, lambda: Encoder4Editing(EncoderConfig(stylegan_size=size)))
    with torch.no_grad():
        w_avg = generator.mean_latent(4096, torch.Generator().manual_seed(seed + 2))
    return generator, encoder, w_avg.expand(generator.n_latent, -1).clone()


def random_clip(seed: int, device: torch.device, tiny: bool = False) -> ClipEmbedder:
    import open_clip

    if tiny:
        return build_tiny_clip(seed + 3, embed_dim=64, image_size=32).to(device)
    model = seeded_build(seed + 3, lambda: open_clip.create_model(CLIP_MODEL_NAME))
    return ClipEmbedder(model, open_clip.get_tokenizer(CLIP_TOKENIZER_NAME)).to(device)


def random_mappers(
    seed: int, generator: Generator, clip: ClipEmbedder, latent_avg: torch.Tensor
) -> CSLAMappers:
    config = mapper_config_for(generator, clip.embed_dim, meta={"weights": "random"})
    mappers = seeded_build(seed + 4, lambda: CSLAMappers(config))
    mappers.latent_avg.copy_(latent_avg)
    return mappers.eval().requires_grad_(False)


# [ours] The tiny CPU models. The generator keeps 512 channels up to 32 px whatever the
# multiplier, so its cost is set by the render size: tests and demos render at 8 px (CLIP
# upsamples).
# style_dim 16: a tiny random CLIP (64-d) cannot resolve a 64-d W from 8 px renders (measured).
TINY_GENERATOR = GeneratorConfig(size=32, style_dim=16, n_mlp=2, channel_multiplier=1)
TINY_CLIP = {"embed_dim": 64, "image_size": 32}


def build_tiny_models(seed: int = 0) -> tuple[Generator, ClipEmbedder]:
    """Random tiny generator + CLIP for tests and CPU demos (no download)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(TINY_GENERATOR).eval()
    return generator, build_tiny_clip(seed=seed, **TINY_CLIP)  # type: ignore[arg-type]
