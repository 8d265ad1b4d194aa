"""Edits, text-to-image and CLIP inversion through the pipeline object (random weights)."""

from __future__ import annotations

import pytest
import torch

from csla_core import PromptError, load_pipeline
from csla_core.editing.result import BASELINE_METHOD, MAPPERS_METHOD


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(random_weights=True, device="cpu", size=64, seed=5)


@pytest.fixture(scope="module")
def code_and_embedding(pipe):
    wplus = pipe.generator.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(2)))
    wplus = pipe.generator.to_wplus(wplus).clone()
    return wplus, pipe.image_embedding(wplus)


def edit(pipe, code_and_embedding, **kwargs):
    wplus, embedding = code_and_embedding
    options = {"n_samples": 3, "seed": 0, "image_embedding": embedding, **kwargs}
    return pipe.edit(
        wplus,
        kwargs.pop("prompt", "smiling"),
        **{k: v for k, v in options.items() if k != "prompt"},
    )


def test_edit_gives_several_different_samples(pipe, code_and_embedding):
    out = edit(pipe, code_and_embedding)
    assert out.method == MAPPERS_METHOD and out.wplus.shape == (3, pipe.n_latent, 512)
    assert len(out.styles) == len(pipe.generator.style_dims)
    changes = out.wplus - code_and_embedding[0]
    assert changes.abs().amax() > 0
    pairwise = torch.cdist(changes.flatten(1), changes.flatten(1))
    assert (pairwise + torch.eye(3) * 1e9).min() > 0, "two samples are identical"
    images = pipe.render_edit(out)
    assert images.shape == (3, 3, 64, 64)
    assert not torch.equal(images[0], images[1])


def test_strength_zero_is_identity_and_negative_reverses(pipe, code_and_embedding):
    wplus = code_and_embedding[0]
    still = edit(pipe, code_and_embedding, strength=0.0)
    assert torch.equal(still.wplus, wplus.expand(3, -1, -1))
    original = pipe.render(wplus)
    assert torch.equal(pipe.render_edit(still)[1:2], original)
    forward = edit(pipe, code_and_embedding, strength=0.8)
    backward = edit(pipe, code_and_embedding, strength=-0.8)
    # Measured 1.2e-7, 1/9 of the bound: the elementwise rounding of w + delta (|w| up to 4.3, one
    # ulp 5e-7), the same on every CPU. A sign error: 2|delta| = 0.09.
    torch.testing.assert_close(
        backward.wplus - wplus, -(forward.wplus - wplus), atol=1e-6, rtol=1e-5
    )


def test_seeds_make_edits_reproducible_and_distinct(pipe, code_and_embedding):
    a, b = edit(pipe, code_and_embedding, seed=1), edit(pipe, code_and_embedding, seed=1)
    c = edit(pipe, code_and_embedding, seed=2)
    assert torch.equal(a.wplus, b.wplus)
    assert not torch.allclose(a.wplus[1:], c.wplus[1:])  # measured 0.04 apart


def test_prompts_users_type(pipe, code_and_embedding):
    with pytest.raises(PromptError):
        edit(pipe, code_and_embedding, prompt="   ")
    long = edit(pipe, code_and_embedding, prompt="a very long prompt " * 60)
    assert any("77 tokens" in notice for notice in long.notices)
    assert edit(pipe, code_and_embedding, prompt="sourire 😀 улыбка 微笑").wplus.shape[0] == 3


def test_generate_and_clip_inversion(pipe):
    out = pipe.generate("a woman with red hair", n=2, seed=0)
    assert out.wplus.shape == (2, pipe.n_latent, 512)
    assert not torch.equal(out.wplus[0], out.wplus[1])
    images = pipe.render_edit(out)
    wplus = pipe.invert_clip(images)
    assert wplus.shape == (2, pipe.n_latent, 512)


def test_without_mappers_edits_use_the_labelled_baseline(code_and_embedding):
    pipe = load_pipeline(random_weights=True, device="cpu", size=64, seed=5)
    pipe.mappers = None
    pipe.baseline_steps = 3
    out = pipe.edit(code_and_embedding[0], "smiling", n_samples=4)
    assert out.method == BASELINE_METHOD and out.wplus.shape == (1, pipe.n_latent, 512)
    assert "optimisation" in out.notices[0] and "slower" in out.notices[0]


def test_without_mappers_a_strength_change_costs_a_render_not_an_optimisation(
    code_and_embedding, monkeypatch
):
    from csla_core.editing import optimise

    pipe = load_pipeline(random_weights=True, device="cpu", size=64, seed=5)
    pipe.mappers = None
    pipe.baseline_steps = 3
    runs = []
    real = optimise.optimise_latent
    monkeypatch.setattr(
        optimise, "optimise_latent", lambda *a, **k: runs.append(1) or real(*a, **k)
    )
    wplus, optimised = code_and_embedding[0], {}
    full = pipe.edit(wplus, "smiling", strength=1.0, optimised=optimised)
    half = pipe.edit(wplus, "smiling", strength=0.5, optimised=optimised)
    assert len(runs) == 1  # the slider move reused the optimum
    torch.testing.assert_close(half.wplus - wplus, 0.5 * (full.wplus - wplus))
    pipe.edit(wplus, "grey hair", strength=0.5, optimised=optimised)
    assert len(runs) == 2  # another prompt is another optimisation
    pipe.edit(wplus, "smiling", strength=0.5)
    assert len(runs) == 3  # no cache given: optimised afresh, as before
