"""CSLA mappers, training, editing, baseline and metrics on tiny random models (CPU, offline).

The tiny generator keeps StyleGAN2's 512 channels up to 32 px, so rendering dominates the cost;
everything renders at 8 px (CLIP upsamples to its 32 px input). One training run (a 512-sample
pool, 300 steps) is shared by the module through a fixture.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from csla_core.cli import main as cli_main
from csla_core.editing.editor import TextEditor
from csla_core.editing.optimise import LatentOptimiser, OptimisationConfig, optimise_latent
from csla_core.editing.strength import calibrate_strength
from csla_core.errors import CSLAError, PromptError, WeightsError
from csla_core.evaluation.metrics import (
    UNAVAILABLE,
    clip_diversity,
    evaluate,
    mean_pairwise_distance,
)
from csla_core.models.builders import build_tiny_models
from csla_core.models.clip import build_tiny_clip
from csla_core.models.mappers import (
    ClipCentre,
    CSLAMappers,
    flatten_styles,
    mapper_config_for,
    split_styles,
    style_rows_for,
)
from csla_core.pipeline import CSLAPipeline
from csla_core.training.config import TrainConfig
from csla_core.training.hub import model_card
from csla_core.training.loop import train
from csla_core.training.sampling import heldout_error
from csla_core.weights import load_mappers, save_mappers

RES = 8  # render size everywhere in these tests
PROMPT = "a smiling face"


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return build_tiny_models(0)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    generator, clip = tiny
    out = tmp_path_factory.mktemp("csla_train")
    cfg = TrainConfig.tiny(eval_samples=192)  # 300 steps, batch 64, 512-sample pool, 8 px
    stats = train(generator, clip, cfg, output_dir=out)
    return out, stats, cfg


@pytest.fixture(scope="module")
def editor(tiny, trained):
    generator, clip = tiny
    mappers = load_mappers(trained[0] / "mappers.safetensors")
    return TextEditor(generator, clip, mappers, render_resolution=RES)


def _face(generator, seed: int, n: int = 1, psi: float = 0.7, latent_avg=None) -> torch.Tensor:
    with torch.no_grad():
        z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
        w = generator.mapping(z)
        if latent_avg is not None:
            w = latent_avg[:1] + psi * (w - latent_avg[:1])
        return generator.to_wplus(w).clone()


# ---------------------------------------------------------------------- CLIP space
def test_text_embeddings_templates_truncation_and_errors(tiny):
    _, clip = tiny
    emb = clip.encode_text(["a face", PROMPT])
    # Measured 0; fp32 rounding of a unit norm is ~1e-7.
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    plain = clip.encode_text([PROMPT], use_templates=False)
    assert not torch.allclose(plain, emb[1:], atol=1e-4)  # templates change the average: by 0.23
    assert torch.equal(clip.encode_text([PROMPT]), emb[1:])  # cached and deterministic
    enc = clip.encode_text_with_info(["a face", "a face with " + "very " * 80 + "long hair"])
    assert enc.truncated == (False, True)
    for bad in ("", "   \n"):
        with pytest.raises(PromptError):
            clip.encode_text([bad])
    with pytest.raises(PromptError):
        clip.encode_text([])


def test_text_runs_only_up_to_the_end_token_and_gives_clips_embedding(tiny, monkeypatch):
    """The text tower runs on the tokens up to the last end token (the mask is causal and the
    embedding is read at the end token, so the padding cannot change it): open_clip's own
    ``encode_text`` on all 77 positions gives the same embeddings, to float32 rounding (measured
    8e-7 on ViT-B/32), for short, long and truncated prompts. A text tower whose mask is not
    causal runs whole."""
    _, clip = tiny
    lengths = []
    transformer = clip.model.transformer
    forward = transformer.forward
    monkeypatch.setattr(
        transformer, "forward", lambda x, **kw: lengths.append(x.shape[1]) or forward(x, **kw)
    )
    texts = ["a face", "a smiling face with grey hair", "a face with " + "very " * 80 + "long hair"]
    tokens = clip.tokenizer(texts)
    with torch.no_grad():
        expected = clip.model.encode_text(tokens)
        for i in range(len(texts)):
            lengths.clear()
            features = clip._text_features(tokens[i : i + 1])
            torch.testing.assert_close(features, expected[i : i + 1], rtol=1e-5, atol=1e-6)
            end = int(tokens[i].argmax()) + 1  # the end token has the highest id
            assert lengths == [end] and (end < 77) == (i < 2)
        lengths.clear()
        torch.testing.assert_close(clip._text_features(tokens), expected, rtol=1e-5, atol=1e-6)
        assert lengths == [77]  # the batch runs as long as its longest text
    # Another model (the shared one is left as it is): a mask that is not causal.
    other = build_tiny_clip(seed=1)
    other.model.attn_mask = torch.zeros(77, 77)
    transformer = other.model.transformer
    forward = transformer.forward
    monkeypatch.setattr(
        transformer, "forward", lambda x, **kw: lengths.append(x.shape[1]) or forward(x, **kw)
    )
    lengths.clear()
    with torch.no_grad():
        other._text_features(tokens[:1])
    assert lengths == [77]


def test_tiny_clip_builds_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = build_tiny_clip(seed=3, embed_dim=16, image_size=32)
    a = clip.encode_text(["a face"])
    b = build_tiny_clip(seed=3, embed_dim=16).encode_text(["a face"])
    assert a.shape == (1, 16) and torch.equal(a, b)  # seeded: same weights, same embedding


def test_image_encoding_applies_clip_normalisation(tiny):
    _, clip = tiny
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images.requires_grad_(True)
    got = clip.encode_images(images)
    x = F.interpolate((images.detach() + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    want = F.normalize(clip.model.encode_image((x - mean) / std), dim=-1)
    skipped = F.normalize(clip.model.encode_image(x), dim=-1)
    # Measured 0 (the same ops); want in fp32 vs float64: 6.8e-8. Channel stds in the wrong order:
    # 1.6e-3, bilinear for bicubic: 1.3e-2.
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, skipped, atol=1e-3)  # measured 0.077 apart
    got.sum().backward()  # differentiable w.r.t. the images (latent optimisation needs it)
    assert images.grad is not None and images.grad.abs().sum() > 0


# ---------------------------------------------------------------------- mappers
def test_mapper_layout_matches_generator(tiny):
    generator, _ = tiny
    assert list(style_rows_for(len(generator.style_dims))) == generator._style_wplus_index()
    cfg = mapper_config_for(generator, 64)
    assert cfg.row_groups() == [(0, 4), (4, 8)]
    styles = generator.styles_from_wplus(_face(generator, 0, n=2))
    assert all(
        torch.equal(a, b)
        for a, b in zip(split_styles(flatten_styles(styles), cfg.style_dims), styles)
    )


def test_mapper_save_load_roundtrip_and_rejects_pickle(tiny, tmp_path):
    generator, _ = tiny
    torch.manual_seed(1)
    mappers = CSLAMappers(
        mapper_config_for(generator, 64, hidden_dim=32, depth=2, mixing="both", mixing_hidden=8)
    )
    with torch.no_grad():  # make every buffer and the zero-initialised layers non-trivial
        for p in mappers.parameters():
            p.add_(0.05 * torch.randn_like(p))
        mappers.centre.update(torch.randn(16, 64))
        mappers.w_mapper.w_scale.uniform_(0.5, 2.0)
        mappers.s_mapper.s_scale.uniform_(0.5, 2.0)
        mappers.latent_avg.normal_()
    path = save_mappers(mappers, tmp_path / "m.safetensors")
    assert json.loads((tmp_path / "m.json").read_text())["clip_dim"] == 64
    loaded = load_mappers(path)
    from csla_core.models.mappers import generator_styles_fn

    fn = generator_styles_fn(generator, mappers.latent_avg)
    f = F.normalize(torch.randn(5, 64), dim=1)
    a, b = mappers.eval().map_embedding(f, fn), loaded.map_embedding(f, fn)
    assert torch.equal(a.dw, b.dw) and torch.equal(a.ds, b.ds)

    torch.save({"weights": torch.zeros(3)}, tmp_path / "pickled.safetensors")
    with pytest.raises(WeightsError):
        load_mappers(tmp_path / "pickled.safetensors")
    with pytest.raises(WeightsError):
        load_mappers(tmp_path / "missing.safetensors")


@settings(max_examples=25, deadline=None)
@given(mean=st.floats(-1, 1), scale=st.floats(0.01, 3.0), seed=st.integers(0, 1000))
def test_clip_centre_standardises_to_unit_scale(mean, scale, seed):
    centre = ClipCentre(8, strategy="ema", momentum=0.5)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        centre.update(mean + scale * torch.randn(512, 8, generator=gen))
    x = centre.standardise(mean + scale * torch.randn(4096, 8, generator=gen))
    # Sampling error only (the result does not depend on mean and scale): over all 1001 seeds
    # |mean| <= 0.036 and std 0.976-1.034; bounds ~3x that. A 10% wrong scale fails.
    assert x.mean().abs() < 0.1 and 0.9 < x.std() < 1.1


# ---------------------------------------------------------------------- training
def test_training_beats_trivial_predictor(trained):
    out, stats, cfg = trained
    print(
        f"\nheld-out residual error / trivial predictor after {cfg.steps} steps: "
        f"W+ {stats['ratio_w']:.3f}, S {stats['ratio_s']:.3f}; "
        f"sample generation {stats['samples_per_s']:.1f} samples/s"
    )
    # Measured 0.27, 0.24 and 0.87 (1 = the trivial predictor; cos 0 = unrelated directions).
    assert stats["ratio_w"] < 0.5
    assert stats["ratio_s"] < 0.5
    assert stats["cos_w"] > 0.6
    assert math.isfinite(stats["samples_per_s"]) and stats["samples_per_s"] > 0
    assert (out / "mappers.safetensors").is_file() and (out / "train_stats.json").is_file()


def test_checkpoint_reloads_to_identical_outputs(tiny, trained):
    generator, clip = tiny
    out, stats, cfg = trained
    final = load_mappers(out / "mappers.safetensors")
    ckpt_dir = out / "checkpoints" / f"step-{cfg.steps:07d}"
    ckpt = load_mappers(ckpt_dir / "mappers.safetensors")
    for k, v in final.state_dict().items():
        assert torch.equal(v, ckpt.state_dict()[k]), k
    state = torch.load(ckpt_dir / "state.pt", weights_only=True)
    assert state["step"] == cfg.steps
    card = model_card(out, "someone/csla-tiny")
    assert "ratio_w" in card and "mappers.safetensors" in card
    # The reloaded mapper reproduces the held-out error the trainer measured in memory.
    again = heldout_error(
        generator,
        clip,
        final,
        n=cfg.eval_samples,
        seed=cfg.eval_seed,
        truncation=cfg.truncation,
        max_resolution=cfg.max_resolution,
    )
    # Bit-identical here (the same computation); another evaluation seed: 7.8e-2.
    assert again["mse_w"] == pytest.approx(stats["mse_w"], rel=1e-5)
    assert again["mse_s"] == pytest.approx(stats["mse_s"], rel=1e-5)


def test_resume_continues_exactly(tiny, tmp_path):
    generator, clip = tiny
    small = dict(
        batch_size=8,
        pool_size=0,
        save_every=2,
        eval_samples=0,
        hidden_dim=32,
        mixing_hidden=8,
        latent_avg_samples=256,
        scale_samples=256,
        centre="temporal",
        log_every=1,
        mix_prob=0.5,
        clip_consistency=0.1,
        clip_consistency_batch=2,
    )
    train(generator, clip, TrainConfig.tiny(steps=4, **small), output_dir=tmp_path / "a")
    train(generator, clip, TrainConfig.tiny(steps=2, **small), output_dir=tmp_path / "b")
    stats = train(
        generator,
        clip,
        TrainConfig.tiny(steps=4, **small),
        output_dir=tmp_path / "b",
        resume="latest",
    )
    assert stats["generated_samples"] == 2 * 8  # only the two remaining steps were sampled
    assert stats["clip_consistency"] > 0
    a = load_mappers(tmp_path / "a" / "mappers.safetensors").state_dict()
    b = load_mappers(tmp_path / "b" / "mappers.safetensors").state_dict()
    for k in a:  # bit-identical here; steps 2 and 4 differ by up to 2.0
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


# ---------------------------------------------------------------------- editing
def test_edit_strength_zero_is_identity(tiny, editor):
    generator, _ = tiny
    w = _face(generator, 5)
    res = editor.edit(w, PROMPT, strength=0.0, n_samples=3)
    assert res.wplus.shape[0] == 3
    assert all(torch.equal(code, w[0]) for code in res.wplus)
    src_styles = generator.styles_from_wplus(w)
    assert all(torch.equal(a, b.expand_as(a)) for a, b in zip(res.styles, src_styles))


def test_edit_seeds_give_distinct_reproducible_directions(tiny, editor):
    generator, _ = tiny
    w = _face(generator, 6)
    a = editor.edit(w, PROMPT, n_samples=4, diversity=0.5, seed=1)
    b = editor.edit(w, PROMPT, n_samples=4, diversity=0.5, seed=1)
    c = editor.edit(w, PROMPT, n_samples=4, diversity=0.5, seed=2)
    assert torch.equal(a.wplus, b.wplus) and torch.equal(a.delta_s, b.delta_s)
    # Samples within one edit differ from each other ...
    d = torch.cdist(a.delta_w.flatten(1), a.delta_w.flatten(1))
    assert d[~torch.eye(4, dtype=torch.bool)].min() > 1e-3  # measured 14.6 (|delta_w| ~ 20)
    # ... and another seed draws other directions (candidate 0, the unperturbed one, aside).
    dirs_a, dirs_c = F.normalize(a.directions, dim=1), F.normalize(c.directions, dim=1)
    # Measured cosines 0.81-0.91; a direction drawn again has cosine 1 to fp32 rounding (~1e-7).
    assert ((dirs_c @ dirs_a.T).max(dim=1).values < 0.99).sum() >= 2
    assert not torch.allclose(a.delta_w, c.delta_w)
    # The scores are sorted (ranked by CLIP score to the target).
    assert torch.all(a.clip_scores[:-1] >= a.clip_scores[1:])


def test_edit_negative_strength_reverses(tiny, editor):
    generator, _ = tiny
    w = _face(generator, 7)
    plus = editor.edit(w, PROMPT, strength=0.8, n_samples=3, seed=4)
    minus = editor.edit(w, PROMPT, strength=-0.8, n_samples=3, seed=4)
    # Deltas: measured exactly opposite (|delta| up to 8); codes: 4.8e-7, the elementwise
    # rounding of w + delta (|w| up to 2.5), so not CPU-dependent; default rtol 1e-5 on top.
    assert torch.allclose(minus.delta_w, -plus.delta_w, atol=1e-5)
    assert torch.allclose(minus.delta_s, -plus.delta_s, atol=1e-5)
    assert torch.allclose(minus.wplus - w, w - plus.wplus, atol=1e-5)
    bigger = editor.edit(w, PROMPT, strength=1.6, n_samples=3, seed=4, rank=False)
    assert bigger.delta_w.norm() > plus.delta_w.norm()


@settings(max_examples=15, deadline=None)
@given(strength=st.floats(0.05, 3.0), seed=st.integers(0, 10_000))
def test_edit_is_odd_in_strength(tiny, editor, strength, seed):
    generator, clip = tiny
    w = _face(generator, 8)
    rng = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(clip.embed_dim, generator=rng), dim=0)
    kw = dict(n_samples=2, diversity=0.3, seed=seed, image_embedding=f, rank=False)
    plus = editor.edit(w, PROMPT, strength=strength, **kw)
    minus = editor.edit(w, PROMPT, strength=-strength, **kw)
    assert torch.allclose(plus.delta_w, -minus.delta_w, atol=1e-5)  # measured exactly opposite


def test_image_guided_edit_moves_towards_the_reference(tiny, editor):
    """Edit face a with the CLIP direction f_b - f_a: the code gets closer to face b's."""
    generator, clip = tiny
    la = editor.latent_avg
    closer = []
    for seed in range(4):
        w = _face(generator, 100 + seed, n=2, latent_avg=la)
        with torch.no_grad():
            f = clip.encode_images(generator(w, max_resolution=RES))
        res = editor.edit_with_embeddings(
            w[:1],
            f[1],
            f[0],
            strength=0.5,
            n_samples=1,
            diversity=0.0,
            image_embedding=f[0],
            rank=False,
        )
        closer.append(float((res.wplus - w[1:]).pow(2).mean() / (w[:1] - w[1:]).pow(2).mean()))
    print(f"\nimage-guided edit: squared distance to the reference / before = {closer}")
    assert sum(closer) / len(closer) < 0.85  # measured 0.49 (0.40-0.67)


def test_clip_inversion_beats_the_average_face(tiny, editor):
    generator, clip = tiny
    w = _face(generator, 200, n=16, latent_avg=editor.latent_avg)
    with torch.no_grad():
        img = generator(w, max_resolution=RES)
    inv = editor.invert_clip(img)
    err_inv = (inv - w).pow(2).mean()
    err_avg = (editor.latent_avg[None] - w).pow(2).mean()
    assert err_inv < 0.6 * err_avg  # ratio measured 0.30
    with torch.no_grad():
        f, f_inv = clip.encode_images(img), clip.encode_images(generator(inv, max_resolution=RES))
        f_avg = clip.encode_images(generator(editor.latent_avg[None], max_resolution=RES))
    assert (f * f_inv).sum(1).mean() > (f @ f_avg[0]).mean()


def test_generate_is_seeded_and_prompt_dependent(editor):
    a = editor.generate(PROMPT, n=3, seed=0)
    assert torch.equal(a, editor.generate(PROMPT, n=3, seed=0))
    assert not torch.allclose(a, editor.generate(PROMPT, n=3, seed=1))
    assert not torch.allclose(a, editor.generate("an old man with a beard", n=3, seed=0))
    assert not torch.allclose(a, editor.generate(PROMPT, n=3, seed=0, modality_gap=False))
    assert torch.cdist(a.flatten(1), a.flatten(1))[0, 1:].min() > 1e-3  # measured 15


def _gain(generator, clip, editor, w, strength, f, target, source=None, res=RES):
    """CLIP-similarity gain to ``target`` (an embedding) of an edit at ``strength``, measured as
    a user sees it (the S render)."""
    source = clip.neutral_embedding() if source is None else source
    out = editor.edit_with_embeddings(
        w,
        target,
        source,
        strength=strength,
        n_samples=1,
        diversity=0.0,
        rank=False,
        image_embedding=f,
    )
    with torch.no_grad():
        image = generator.synthesize(out.styles, max_resolution=res)
        return float(clip.encode_images(image)[0] @ target - f @ target)


def test_auto_strength_reaches_the_target_clip_gain(tiny, editor):
    """Image-guided edits (towards another face's CLIP embedding) are what the tiny mapper has
    learnt, so their gain is meaningful: auto must land on a requested fraction of it."""
    generator, clip = tiny
    w = _face(generator, 11, n=2, latent_avg=editor.latent_avg)
    with torch.no_grad():
        f_a, f_b = clip.encode_images(generator(w, max_resolution=RES))
    unit = _gain(generator, clip, editor, w[:1], 1.0, f_a, f_b, f_a)
    assert unit > 0  # stepping towards b's embedding makes the render more like b to CLIP
    for fraction in (0.3, 0.8):
        search = calibrate_strength(
            editor, w[:1], f_b, f_a, target_gain=fraction * unit, image_embedding=f_a
        )
        print(
            f"\nauto strength: target gain {fraction * unit:.3e} -> strength "
            f"{search.strength:.3f}, gain {search.gain:.3e} ({search.renders} renders)"
        )
        # 0.05: the search's own DEFAULT_TOLERANCE (measured 0.018-0.020).
        assert search.reached and abs(search.gain - fraction * unit) <= 0.05 * fraction * unit
        assert search.renders <= 8
        # What it reports is what an edit at that strength gives: bit-identical here (the same
        # render); 1% off in strength moves the gain by 0.6-1.1%.
        assert _gain(generator, clip, editor, w[:1], search.strength, f_a, f_b, f_a) == (
            pytest.approx(search.gain, rel=1e-4, abs=1e-9)
        )
    out_of_reach = calibrate_strength(
        editor, w[:1], f_b, f_a, target_gain=2.5, image_embedding=f_a
    )  # cosines differ by <= 2
    assert not out_of_reach.reached and abs(out_of_reach.strength) <= 3.0
    assert "could not reach" in out_of_reach.describe()


def test_pipeline_edit_with_auto_strength(tiny, trained):
    generator, clip = tiny
    mappers = load_mappers(trained[0] / "mappers.safetensors")
    pipe = CSLAPipeline(
        generator=generator,
        encoder=None,
        latent_avg=mappers.latent_avg,
        device=torch.device("cpu"),
        clip=clip,
        mappers=mappers,
    )
    w = _face(generator, 12, latent_avg=mappers.latent_avg)
    f = pipe.image_embedding(w)
    editor = pipe.editor()

    def gain(prompt: str) -> float:
        text = clip.encode_text([prompt])[0]
        return _gain(generator, clip, editor, w, 1.0, f[0], text, res=editor.render_resolution)

    # Random text embeddings: take a prompt whose edit raises its CLIP similarity here.
    prompt = max(("a smiling face", "an old face", "a face with glasses", "a child"), key=gain)
    target = 0.5 * gain(prompt)
    assert target > 0
    auto = pipe.edit(
        w, prompt, strength="auto", target_clip_gain=target, n_samples=2, image_embedding=f
    )
    search = auto.strength_search
    assert search is not None and search.reached and auto.strength == search.strength
    assert abs(search.gain - target) <= 0.05 * target and not auto.notices  # DEFAULT_TOLERANCE
    # "auto" is the same edit as typing in the strength it found; explicit ones are unchanged.
    typed = pipe.edit(w, prompt, strength=auto.strength, n_samples=2, image_embedding=f)
    assert torch.equal(typed.wplus, auto.wplus) and typed.strength_search is None
    still = pipe.edit(w, prompt, strength=0.0, n_samples=2, image_embedding=f)
    assert still.strength == 0.0 and torch.equal(still.wplus, w.expand(2, -1, -1))
    far = pipe.edit(
        w, prompt, strength="auto", target_clip_gain=2.5, n_samples=1, image_embedding=f
    )
    assert not far.strength_search.reached and "could not reach" in far.notices[0]
    with pytest.raises(ValueError):
        pipe.edit(w, prompt, strength="strong")
    pipe.mappers = None
    with pytest.raises(CSLAError, match="auto"):
        pipe.edit(w, prompt, strength="auto")


# ---------------------------------------------------------------------- baseline
def test_optimisation_baseline_raises_clip_similarity(tiny):
    generator, clip = tiny
    w = _face(generator, 9)
    cfg = OptimisationConfig(steps=20, max_resolution=RES)
    flags = [p.requires_grad for p in generator.parameters()]
    res = optimise_latent(generator, clip, w, PROMPT, cfg)
    print(f"\nbaseline CLIP similarity {res.clip_trace[0]:.4f} -> {res.final_similarity:.4f}")
    assert len(res.clip_trace) == 20
    assert res.final_similarity > res.clip_trace[0] + 1e-3  # measured +0.088
    assert flags == [p.requires_grad for p in generator.parameters()]  # flags restored
    # The L2 term anchors the code: a heavy weight keeps it closer to the start.
    tight = optimise_latent(
        generator, clip, w, PROMPT, OptimisationConfig(steps=20, max_resolution=RES, l2_weight=5.0)
    )
    assert (tight.wplus - w).norm() < (res.wplus - w).norm()
    edit = LatentOptimiser(generator, clip, OptimisationConfig(steps=3, max_resolution=RES))
    assert torch.equal(edit.edit(w, PROMPT, strength=0.0).wplus, w)


# ---------------------------------------------------------------------- metrics
def test_diversity_metrics():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert mean_pairwise_distance(x) == pytest.approx(5.0)  # exact (3-4-5)
    e = F.normalize(torch.randn(4, 8), dim=1)
    # Measured 0 for copies of one embedding (fp32 rounding ~1e-7); 4 random ones: 1.16.
    assert clip_diversity(e[:1].expand(4, -1)) == pytest.approx(0.0, abs=1e-6)
    assert clip_diversity(e) > 0.1


def test_evaluate_table(tiny, editor):
    generator, clip = tiny

    def face_embed(images):  # a stand-in face embedder: the downsampled pixels
        return F.adaptive_avg_pool2d(images, 4).flatten(1)

    table = evaluate(
        generator,
        clip,
        editor=editor,
        prompts=[PROMPT],
        n_images=1,
        n_samples=3,
        baseline=OptimisationConfig(steps=3, max_resolution=RES),
        render_resolution=RES,
        identity_fn=face_embed,
    )
    csla, base = table.row("CSLA"), table.row("optimisation baseline")
    assert isinstance(csla["clip_score"], float) and isinstance(base["clip_score"], float)
    assert isinstance(csla["identity"], float) and -1.0 <= csla["identity"] <= 1.0
    assert csla["diversity"] > 0 and base["diversity"].startswith("n/a")
    assert csla["lpips"] == UNAVAILABLE  # lpips is not installed here
    assert csla["seconds_per_edit"] > 0 and base["seconds_per_edit"] > 0
    assert "| CSLA |" in table.to_markdown()
    no_id = evaluate(
        generator,
        clip,
        editor=editor,
        prompts=[PROMPT],
        n_images=1,
        n_samples=2,
        render_resolution=RES,
    )
    assert no_id.row("CSLA")["identity"] == UNAVAILABLE


# ---------------------------------------------------------------------- commands
def test_commands_run_on_tiny_models(trained, tmp_path, capsys):
    out = trained[0]
    small = "--steps 2 --batch-size 4 --pool-size 0 --eval-samples 0".split()
    small += "--latent-avg-samples 256 --scale-samples 256".split()
    assert cli_main(["train", "--tiny", "-o", str(tmp_path / "t"), *small]) == 0
    assert (tmp_path / "t" / "mappers.safetensors").is_file()
    edit = ["edit-latent", "--tiny", "--mappers", str(out), "--prompt", PROMPT, "-n", "2"]
    assert cli_main([*edit, "--resolution", "8", "-o", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "edit.png").is_file()
    generate = ["generate-latent", "--tiny", "--mappers", str(out / "mappers.safetensors")]
    generate += ["--prompt", PROMPT, "--samples", "2", "--resolution", "8"]
    assert cli_main([*generate, "--output", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "generate.png").is_file()
    evaluate_args = ["evaluate", "--tiny", "--mappers", str(out), "--prompts", PROMPT]
    evaluate_args += "--n-images 1 -n 2 --baseline-steps 2".split()
    assert cli_main(evaluate_args) == 0
    assert "optimisation baseline" in capsys.readouterr().out
    auto = ["--resolution", "8", "--strength", "auto", "--target-clip-gain", "2.5"]
    assert cli_main([*edit, *auto, "-o", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["target_reached"] is False and abs(report["strength"]) <= 3.0
    assert "could not reach" in captured.err
    # Clear errors, not tracebacks:
    assert cli_main(["edit-latent", "--tiny", "--prompt", PROMPT, "-o", str(tmp_path / "x")]) == 2
    assert "no --mappers given" in capsys.readouterr().err
    assert cli_main(["train", "-o", str(tmp_path / "y")]) == 2
    blank = ["edit-latent", "--tiny", "--mappers", str(out), "--prompt", " "]
    assert cli_main([*blank, "-o", str(tmp_path / "z")]) == 2
    # The old spellings still work (hidden from --help).
    old = ["edit-latent", "--tiny", "--mappers", str(out), "--prompt", PROMPT, "--n", "1"]
    assert cli_main([*old, "--resolution", "8", "--out", str(tmp_path / "old")]) == 0
    assert (tmp_path / "old" / "edit.png").is_file()


_MIXED_PRECISION_RUN = """
import json, sys, torch
from csla_core.models.builders import build_tiny_models
from csla_core.training import loop, sampling
from csla_core.training.config import TrainConfig

generator, clip = build_tiny_models(0)
seen, dtypes = [], set()
render_features, step_loss = sampling.render_features, loop.step_loss

def recording(*args, **kwargs):
    seen.append(str(torch.get_autocast_dtype("cpu")) if torch.is_autocast_enabled("cpu") else "off")
    return render_features(*args, **kwargs)

def loss_of(model, core, generator, clip, batch, *rest):
    dtypes.update((str(batch.wplus.dtype), str(batch.features.dtype)))
    return step_loss(model, core, generator, clip, batch, *rest)

sampling.render_features, loop.step_loss = recording, loss_of
cfg = TrainConfig.tiny(steps=2, pool_size=0, eval_samples=0, save_every=0,
                       mixed_precision=sys.argv[2], cpu=True)
loop.train(generator, clip, cfg, output_dir=sys.argv[1])
print(json.dumps({"renders": sorted(set(seen)), "batches": sorted(dtypes)}))
"""


@pytest.mark.parametrize("mixed", ["bf16", "no"])
def test_training_samples_render_in_the_runs_mixed_precision(tmp_path, mixed):
    """accelerate applies ``mixed_precision`` to the mappers; the samples' renders (most of a
    GPU step) run in it too, and the W+ codes and embeddings the loss sees are float32. CPU bf16
    stands in for a GPU's fp16 / bf16. In a process of its own: accelerate keeps one mixed
    precision per process."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _MIXED_PRECISION_RUN, str(tmp_path), mixed],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["renders"] == (["torch.bfloat16"] if mixed == "bf16" else ["off"])
    assert seen["batches"] == ["torch.float32"]
