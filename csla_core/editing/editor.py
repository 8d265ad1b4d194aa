"""Inference with trained CSLA mappers: text edits, text-to-image and CLIP inversion.

Independent of the app and the pipeline: give it a generator, a ``ClipEmbedder``, trained
``CSLAMappers`` and the W+ average.

[paper] After training, CLIP's text encoder + the mappers give text-driven manipulation from a
(source, target) sentence pair without optimisation, several different manipulation directions
for one prompt, text-to-image generation, and CLIP's image encoder + the mappers a (coarse)
GAN inversion.

[ours] How exactly (``TextEditor``):
- Text direction: t, s = template-averaged, normalised text embeddings of the target and the
  source prompt (source defaults to ``clip.neutral_prompt``, "a face"); delta = t - s.
- Image anchor: f_img, the CLIP embedding of the input rendered at ``render_resolution``
  (or the caller's ``image_embedding``); x0 = (f_img - c) / std in the mapper's units.
- Diversity: candidate k draws eps_k ~ N(0, I) in CLIP space from ``torch.Generator(seed)``
  (on CPU, so seeds are device-independent), projects it onto the tangent plane of the sphere
  at t, normalises it to u_k, and perturbs the target on the sphere:
  t_k = normalise(t + diversity * ||delta|| * u_k), delta_k = t_k - s. So ``diversity`` is the
  perturbation's length relative to the edit's own length (0: all samples identical, 1: as
  large as the edit). With ``include_central`` candidate 0 is the unperturbed delta.
- Strength scales the CLIP-space step: dx_k = strength * delta_k / std. The latent change is the
  central difference dW_k = (M(x0 + dx_k) - M(x0 - dx_k)) / 2 (same for S), which is exactly
  odd in the strength: strength 0 returns the input unchanged (short-cut, bit-exact) and a
  negative strength exactly reverses the direction. ``difference="forward"`` gives the method
  notes' M(x0 + dx_k) - M(x0) instead.
- Ranking (clip2latent's pattern): ``oversample`` x ``n_samples`` candidates are mapped at
  +|strength|, rendered, scored by CLIP cosine to the target text; the best ``n_samples`` are
  kept (highest first) and only then the sign of the strength is applied, so reversing the
  strength reverses the same directions.
- Edited codes are returned both in W+ (w + dW) and in S (s(w) + dS, dS after adaptive style
  mixing); render the S ones with ``generator.synthesize``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models.clip import ClipEmbedder
from ..models.mappers import CSLAMappers, MappedResiduals, generator_styles_fn, split_styles
from ..models.stylegan2 import Generator
from .result import EditResult


def _as_latent_avg(latent_avg: torch.Tensor, n_latent: int) -> torch.Tensor:
    """[D] | [1, D] | [n_latent, D] | [1, n_latent, D] -> [n_latent, D]."""
    la = latent_avg.detach().float()
    if la.ndim == 3:
        la = la[0]
    if la.ndim == 1:
        la = la[None]
    if la.shape[0] == 1:
        la = la.expand(n_latent, -1)
    if la.shape[0] != n_latent:
        raise ValueError(
            f"latent_avg must have 1 or {n_latent} rows, got {tuple(latent_avg.shape)}"
        )
    return la.contiguous()


class TextEditor:
    """CSLA inference: ``edit``, ``generate``, ``invert_clip`` (see module doc)."""

    def __init__(
        self,
        generator: Generator,
        clip: ClipEmbedder,
        mappers: CSLAMappers,
        latent_avg: torch.Tensor | None = None,
        *,
        render_resolution: int | None = 256,
        noise_mode: str = "const",
        difference: str = "central",
        rank: bool = True,
        oversample: int = 2,
        include_central: bool = True,
    ) -> None:
        if difference not in ("central", "forward"):
            raise ValueError("difference must be 'central' or 'forward'")
        self.generator = generator.eval()
        self.clip = clip
        self.mappers = mappers.eval()
        self.device = mappers.latent_avg.device
        la = mappers.latent_avg if latent_avg is None else latent_avg
        self.latent_avg = _as_latent_avg(la, generator.n_latent).to(self.device)
        self.render_resolution = min(render_resolution or generator.size, generator.size)
        self.noise_mode = noise_mode
        self.difference = difference
        self.rank = rank
        self.oversample = max(1, oversample)
        self.include_central = include_central
        self._styles_fn = generator_styles_fn(generator, self.latent_avg)

    def with_generator(self, generator: Generator) -> TextEditor:
        """This editor rendering with another generator of the same model (a refined face's
        ``TunedGenerator``: its W -> S layers are the shared ones, so the mappers still fit)."""
        editor = copy.copy(self)
        editor.generator = generator
        return editor

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def render(self, wplus: torch.Tensor, max_resolution: int | None = None) -> torch.Tensor:
        """W+ [B, n_latent, D] -> images [B, 3, R, R] in [-1, 1] (R = render_resolution)."""
        return self.generator(
            wplus.to(self.device),
            noise_mode=self.noise_mode,  # type: ignore[arg-type]
            max_resolution=max_resolution or self.render_resolution,
        )

    @torch.no_grad()
    def image_embedding(self, wplus: torch.Tensor) -> torch.Tensor:
        """CLIP embedding [B, D] of the render of ``wplus``."""
        return self.clip.encode_images(self.render(wplus))

    def _map(self, x: torch.Tensor) -> MappedResiduals:
        return self.mappers.map_standardised(x, self._styles_fn)

    def _text(self, prompt: str) -> tuple[torch.Tensor, bool]:
        enc = self.clip.encode_text_with_info([prompt])
        return enc.embeddings[0].to(self.device), enc.any_truncated

    @staticmethod
    def sample_targets(
        target: torch.Tensor, radius: float, n: int, seed: int, include_central: bool = True
    ) -> torch.Tensor:
        """n target embeddings on the unit sphere around ``target`` ([D], normalised).

        Candidate k: normalise(target + radius * u_k), u_k a unit Gaussian direction in the
        tangent plane at ``target`` (drawn from ``torch.Generator().manual_seed(seed)`` on CPU).
        """
        t = F.normalize(target.float(), dim=-1)
        eps = torch.randn(n, t.shape[-1], generator=torch.Generator().manual_seed(seed))
        eps = eps.to(t.device)
        tangent = eps - (eps @ t)[:, None] * t[None]
        u = F.normalize(tangent, dim=-1)
        if include_central:
            u[0] = 0.0
        return F.normalize(t[None] + radius * u, dim=-1)

    def latent_steps(self, x0: torch.Tensor, dx: torch.Tensor) -> MappedResiduals:
        """Latent change for standardised CLIP steps dx [n, D] at anchor(s) x0 [1 or n, D]."""
        if self.difference == "central":
            both = self._map(torch.cat([x0 + dx, x0 - dx]))
            n = len(dx)
            dw = 0.5 * (both.dw[:n] - both.dw[n:])
            ds = None if both.ds is None else 0.5 * (both.ds[:n] - both.ds[n:])
            return MappedResiduals(dw, ds)
        plus, base = self._map(x0 + dx), self._map(x0)
        ds = None if plus.ds is None or base.ds is None else plus.ds - base.ds
        return MappedResiduals(plus.dw - base.dw, ds)

    # ------------------------------------------------------------------ edit
    @torch.no_grad()
    def edit(
        self,
        wplus: torch.Tensor,
        target_prompt: str,
        source_prompt: str | None = None,
        strength: float = 1.0,
        n_samples: int = 4,
        diversity: float = 0.5,
        seed: int = 0,
        image_embedding: torch.Tensor | None = None,
        rank: bool | None = None,
    ) -> EditResult:
        """Edit one W+ code [1, n_latent, D] (or W [1, D]) towards ``target_prompt``.

        ``source_prompt`` defaults to the neutral prompt; ``image_embedding`` [D] skips
        rendering the input for its CLIP embedding; ``rank`` overrides the editor's default.
        """
        source_prompt = source_prompt or self.clip.neutral_prompt
        t, trunc_t = self._text(target_prompt)
        s, trunc_s = self._text(source_prompt)
        return self.edit_with_embeddings(
            wplus,
            t,
            s,
            strength=strength,
            n_samples=n_samples,
            diversity=diversity,
            seed=seed,
            image_embedding=image_embedding,
            rank=rank,
            target_prompt=target_prompt,
            source_prompt=source_prompt,
            truncated=trunc_t or trunc_s,
        )

    @torch.no_grad()
    def edit_with_embeddings(
        self,
        wplus: torch.Tensor,
        target_embedding: torch.Tensor,
        source_embedding: torch.Tensor,
        *,
        strength: float = 1.0,
        n_samples: int = 4,
        diversity: float = 0.5,
        seed: int = 0,
        image_embedding: torch.Tensor | None = None,
        rank: bool | None = None,
        target_prompt: str = "",
        source_prompt: str = "",
        truncated: bool = False,
    ) -> EditResult:
        """``edit`` with CLIP embeddings [D] for target and source (text or image ones: e.g.
        a reference photo's embedding as the target gives image-guided editing)."""
        if n_samples < 1:
            raise ValueError("n_samples must be >= 1")
        wplus = self.generator.to_wplus(wplus.to(self.device).float())
        if wplus.shape[0] != 1:
            raise ValueError(f"edit takes one code [1, n_latent, D], got {tuple(wplus.shape)}")
        t = F.normalize(target_embedding.to(self.device).float().reshape(-1), dim=0)
        s = F.normalize(source_embedding.to(self.device).float().reshape(-1), dim=0)
        styles_src = self.generator.styles_from_wplus(wplus)
        has_s = self.mappers.s_mapper is not None
        common = dict(
            target_prompt=target_prompt,
            source_prompt=source_prompt,
            strength=float(strength),
            diversity=float(diversity),
            seed=int(seed),
            truncated=truncated,
        )
        if strength == 0:  # exactly the input, n times (no mapping, no rounding)
            n_latent, dim = wplus.shape[1:]
            return EditResult(
                wplus=wplus.expand(n_samples, -1, -1).clone(),
                styles=[st.expand(n_samples, -1).clone() for st in styles_src],
                delta_w=torch.zeros(n_samples, n_latent, dim, device=self.device),
                delta_s=torch.zeros(n_samples, sum(self.generator.style_dims), device=self.device)
                if has_s
                else None,
                directions=torch.zeros(n_samples, t.shape[-1], device=self.device),
                clip_scores=None,
                **common,
            )  # type: ignore[arg-type]

        rank = self.rank if rank is None else rank
        n_cand = n_samples * (self.oversample if rank else 1)
        radius = float(diversity) * float((t - s).norm())
        targets = self.sample_targets(t, radius, n_cand, seed, self.include_central)
        steps = abs(float(strength)) * (targets - s[None])  # CLIP-space steps, [n_cand, D]
        f_img = image_embedding if image_embedding is not None else self.image_embedding(wplus)
        x0 = self.mappers.centre.standardise(f_img.to(self.device).reshape(1, -1))
        res = self.latent_steps(x0, self.mappers.centre.standardise_delta(steps))

        scores = None
        order = torch.arange(n_cand, device=self.device)
        if rank and n_cand > 1:
            scores_all = self.image_embedding(wplus + res.dw) @ t
            order = torch.argsort(scores_all, descending=True)
            scores = scores_all[order[:n_samples]]
        order = order[:n_samples]
        sign = 1.0 if strength > 0 else -1.0
        dw = sign * res.dw[order]
        ds = None if res.ds is None else sign * res.ds[order]
        if ds is not None:
            parts = split_styles(ds, self.generator.style_dims)
            styles = [a + b for a, b in zip(styles_src, parts)]
        else:  # no S branch: S follows the edited W+
            styles = self.generator.styles_from_wplus(wplus + dw)
        return EditResult(
            wplus=wplus + dw,
            styles=styles,
            delta_w=dw,
            delta_s=ds,
            directions=sign * steps[order],
            clip_scores=scores,
            **common,
        )  # type: ignore[arg-type]

    # ------------------------------------------------------------------ text-to-image
    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        n: int = 4,
        seed: int = 0,
        diversity: float = 0.5,
        strength: float = 1.0,
        modality_gap: bool = True,
    ) -> torch.Tensor:
        """Text -> ``n`` W+ codes [n, n_latent, D] (render with ``generator``).

        [ours] ``modality_gap=True`` maps the text embedding shifted into the image cloud:
        f = c + (t - t_neutral), i.e. the *difference* of text embeddings (better aligned with
        image differences than raw text is with images, as DeltaEdit observed) applied to the
        CLIP-space centre. ``False`` maps the raw text embedding as if it were an image
        embedding (the direct reading). ``strength`` scales the residual (like truncation);
        diversity perturbs the target on the sphere as in ``edit``.
        """
        t, _ = self._text(prompt)
        # Both readings are x = (f - c) / std: f = c + (t - t_neutral), or f = t.
        if modality_gap:
            anchor = self.clip.neutral_embedding().to(self.device)
        else:
            anchor = self.mappers.centre.centre
        radius = float(diversity) * float((t - anchor).norm())
        targets = self.sample_targets(t, radius, n, seed, self.include_central)
        x = self.mappers.centre.standardise_delta(float(strength) * (targets - anchor[None]))
        return self.latent_avg[None] + self._map(x).dw

    # ------------------------------------------------------------------ inversion
    @torch.no_grad()
    def invert_clip(self, image: torch.Tensor) -> torch.Tensor:
        """[paper] CLIP-based (coarse) inversion: images [B, 3, H, W] in [-1, 1] -> W+."""
        if image.ndim == 3:
            image = image[None]
        f = self.clip.encode_images(image.to(self.device))
        return self.latent_avg[None] + self.mappers.map_embedding(f, self._styles_fn).dw
