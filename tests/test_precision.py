"""The precision choice (fp32 or native bf16 on a CPU) and the bf16 path end to end.

Numerics against the golden data at full size: test_golden_parity.py. Speed: the bench
(``python -m csla_core bench``, docs/performance.md, "Reduced precision on CPU").
"""

from __future__ import annotations

import copy

import pytest
import torch

from csla_core import load_pipeline, runtime
from csla_core.runtime import choose_precision


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)


def test_auto_picks_bf16_only_where_native_and_measured_faster(no_env, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(runtime, "bf16_conv_speed", lambda: (1.0, 0.5))
    choice = choose_precision("auto", "cpu")
    assert choice.precision == "bf16"
    assert "avx512_bf16" in choice.reason and "0.50x" in choice.reason
    # Native but not faster enough (the 0.8 share): fp32 maths (compact storage), and the
    # reason says so.
    monkeypatch.setattr(runtime, "bf16_conv_speed", lambda: (1.0, 0.9))
    choice = choose_precision("auto", "cpu")
    assert choice.precision == "fp32-compact" and "0.90x" in choice.reason
    # Emulated bf16 is never chosen: the probe is not even run.
    monkeypatch.setattr(runtime, "native_bf16_flags", lambda: [])
    monkeypatch.setattr(runtime, "bf16_conv_speed", lambda: pytest.fail("probe ran"))
    choice = choose_precision("auto", "cpu")
    assert choice.precision == "fp32-compact" and "no native bf16" in choice.reason
    # A GPU gets fp32 unless reduced precision is asked for by name.
    assert choose_precision("auto", "cuda").precision == "fp32"


def test_explicit_and_environment_choices(no_env, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16_flags", lambda: [])
    assert choose_precision("bf16", "cpu") == runtime.PrecisionChoice("bf16", "asked for")
    monkeypatch.setenv(runtime.PRECISION_ENV, "BF16")
    choice = choose_precision("auto", "cpu")
    assert choice.precision == "bf16" and runtime.PRECISION_ENV in choice.reason
    assert choose_precision("fp32", "cpu").precision == "fp32"  # a named choice wins
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        choose_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("fp8", "cpu")


def test_probe_measures_both_dtypes_once():
    first = runtime.bf16_conv_speed()
    assert all(seconds > 0 for seconds in first)
    assert runtime.bf16_conv_speed() is first  # measured once per process


OPTIONS = dict(random_weights=True, device="cpu", size=64, seed=2, tiny_clip=True)


@pytest.fixture(scope="module")
def pipes():
    return load_pipeline(precision="fp32", **OPTIONS), load_pipeline(precision="bf16", **OPTIONS)


def test_bf16_weights_are_stored_once_and_smaller(pipes):
    fp32, bf16 = pipes
    convs = [layer.weight for layer in bf16.generator._style_layers()]
    assert all(w.dtype == torch.bfloat16 for w in convs)
    # Channels-last storage: the kernels reach oneDNN without a copy.
    assert all(w[0].is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert bf16.generator.style[1].weight.dtype == torch.float32  # mapping network
    assert convs[0].dtype != fp32.generator.conv1.conv.weight.dtype
    assert {p.dtype for p in bf16.clip.model.parameters()} == {torch.bfloat16}

    def nbytes(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    # Exactly two bytes saved per convolution weight: no float32 copy is kept anywhere.
    assert nbytes(bf16.generator) == nbytes(fp32.generator) - 2 * sum(w.numel() for w in convs)
    assert nbytes(bf16.clip) == pytest.approx(nbytes(fp32.clip) / 2, rel=1e-3)
    # The same models for the mappers: the fingerprint is of the weights as loaded.
    assert bf16.fingerprints == fp32.fingerprints


def test_encoder_heads_are_stacked_without_a_copy_and_give_the_same_codes(pipes):
    """The encoder's style blocks run stacked (bf16 with bf16 pipelines,
    ``Encoder4Editing.prepare_heads``), their parameters are views of the stacked weights (no
    second copy), and the codes are the per-block ones: to float32 rounding (measured 2.5e-6
    on the golden data), or within the project's 2e-2 bf16 bound with bf16 heads."""
    fp32, bf16 = pipes
    image = torch.rand(2, 3, 256, 256) * 2 - 1
    plain = copy.deepcopy(fp32.encoder)
    plain._stacked_views = []  # the per-block path
    with torch.inference_mode():
        expected = plain(image)
        for pipe, bound in ((fp32, 1e-5), (bf16, 2e-2)):
            encoder = pipe.encoder
            assert encoder._stacked_ready()
            error = float((encoder(image) - expected).norm() / expected.norm())
            assert error < bound, (pipe.precision, error)
            for _, group, layers in encoder._stacked:
                storage = layers[0][0].untyped_storage().data_ptr()
                for i in group:
                    weight = encoder.styles[i].convs[0].weight
                    assert weight.untyped_storage().data_ptr() == storage
    convs = [p for block in bf16.encoder.styles for p in block.convs.parameters()]
    assert {p.dtype for p in convs} == {torch.bfloat16}

    def nbytes(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    # Two bytes saved per head weight (118 M of 152 M at this size; 231 M of 267 M at 1024).
    saved = nbytes(fp32.encoder) - nbytes(bf16.encoder)
    assert saved == 2 * sum(p.numel() for p in convs) > nbytes(bf16.encoder) / 2

    encoder = copy.deepcopy(plain).prepare_heads()
    # Loading weights into a prepared encoder updates the stacked path through the views.
    encoder.load_state_dict({k: v * 0.5 for k, v in plain.state_dict().items()})
    plain.load_state_dict(encoder.state_dict())
    with torch.inference_mode():
        assert encoder._stacked_ready()
        assert torch.allclose(encoder(image), plain(image), rtol=1e-5, atol=1e-6)
    # The backbone keeps the layout its CPU convolutions compute in through a checkpoint load
    # (a real checkpoint's tensors are contiguous), or every convolution reorders its input.
    backbone = [m.weight for m in encoder.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(backbone) > 50
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in backbone)
    # Gradients need the parameters themselves: the per-block path, and they reach them.
    encoder.requires_grad_(True)
    assert not encoder._stacked_ready()
    encoder(image[:1]).sum().backward()
    assert encoder.styles[-1].convs[0].weight.grad.abs().sum() > 0
    # .to() and the like convert each parameter on its own: the heads are stacked again there
    # (and the old stacked tensors let go), giving the per-block result in the new dtype.
    encoder.requires_grad_(False).double()
    with torch.inference_mode():
        assert encoder._stacked_ready()
        assert {w.dtype for _, _, layers in encoder._stacked for w, _ in layers} == {torch.float64}
        codes = encoder(image.double())
        plain.double()._stacked_views = []
        torch.testing.assert_close(codes, plain(image.double()))


def test_encoder_backbone_stays_float32_under_autocast(pipes):
    """On a GPU, reduced precision is autocast; the e4e backbone computes in float32 there too,
    as it is stored on a CPU, and the pyramid and heads in the autocast dtype. (On the golden
    data on an H200 the codes were 1.7e-2 from the reference with the backbone in bf16, 7.0e-3
    with it in float32: docs/performance.md, "GPU".) CPU autocast stands in for the GPU's here."""
    fp32, _ = pipes
    encoder, seen = fp32.encoder, {}

    def record(name):
        return lambda module, inputs, output: seen.__setitem__(name, output.dtype)

    hooks = [
        encoder.body[-1].register_forward_hook(record("backbone")),
        encoder.latlayer1.register_forward_hook(record("pyramid")),
    ]
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        with torch.inference_mode():
            exact = encoder(image)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                codes = encoder(image)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"backbone": torch.float32, "pyramid": torch.bfloat16}
    error = float((codes.float() - exact).norm() / exact.norm())
    assert 1e-4 < error < 2e-2, error  # the heads did run in bf16, within the bound


def test_bf16_pipeline_edits_like_fp32(pipes):
    """CSLA edits, text and image embeddings and the optimisation fallback (gradients through
    bf16 weights) all run in bf16 and stay close to fp32: 2e-2 for images (the project's bf16
    bound); CLIP embeddings of the tiny model measured 4e-3 (cosine > 0.999)."""
    fp32, bf16 = pipes
    wplus = fp32.latent_avg[None].clone()
    edits = [p.edit(wplus, "smiling", n_samples=2, seed=1) for p in pipes]
    renders = [p.render_edit(e) for p, e in zip(pipes, edits)]
    assert renders[1].dtype == torch.float32
    error = float((renders[1] - renders[0]).norm() / renders[0].norm())
    assert 1e-4 < error < 2e-2
    text = [p.clip.encode_text(["a smiling face"]) for p in pipes]
    assert float(torch.cosine_similarity(*text)) > 0.999
    images = [p.clip.encode_images(r) for p, r in zip(pipes, renders)]
    assert float(torch.cosine_similarity(*images).min()) > 0.999
    bf16.baseline_steps = 2
    mappers = bf16.mappers
    bf16.use_mappers(None, "none")
    try:
        fallback = bf16.edit(wplus, "smiling", n_samples=1)
        assert torch.isfinite(fallback.wplus).all()
        assert float((fallback.wplus - wplus).abs().max()) > 0  # the optimiser moved it
    finally:
        bf16.use_mappers(mappers, "random")


def test_a_precision_the_device_cannot_run_is_one_clear_error(tmp_path, capsys):
    from csla_core.cli import main as cli_main

    argv = ["generate", "a face", "--random-weights", "--device", "cpu", "--precision", "fp16"]
    assert cli_main([*argv, "-o", str(tmp_path)]) == 2
    assert "error: fp16 is for CUDA GPUs" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_kernels_render_the_image_the_plain_convolutions_do(monkeypatch, dtype):
    """The 4-64 px layers use their kernels reordered once into oneDNN's layout
    (``ModulatedConv2d._prepacked_kernels``): the same image as plain convolutions, again
    after the weights change, and through a copy of the model (the opaque cache is not
    copied)."""
    from csla_core.models import stylegan2
    from csla_core.models.stylegan2 import Generator

    assert stylegan2._prepacking_works(dtype)  # this torch build has the operators
    torch.manual_seed(0)
    gen = Generator(size=64).eval().requires_grad_(False).prepare_synthesis(dtype)
    wplus = torch.randn(2, gen.n_latent, gen.style_dim)

    def render(model, packed: bool) -> torch.Tensor:
        works = stylegan2._prepacking_works if packed else lambda dtype: False
        with monkeypatch.context() as patch, torch.inference_mode():
            patch.setattr(stylegan2, "_prepacking_works", works)
            return model(wplus, impl="fast")

    def packed_layers(model) -> int:
        caches = [getattr(m, "_packed_cache", None) for m in model.modules()]
        return sum(all(k.is_mkldnn for k in c[1]) for c in caches if c is not None)

    # Measured: identical in bf16, 1.7e-5 apart at most in float32 (full size); a wrong
    # padding or kernel order is off by the image's own scale.
    tol = {"rtol": 1e-4, "atol": 1e-4}
    packed_image = render(gen, True)
    # The kernels the packed copies are made from are not kept besides them (the polyphase
    # kernels of the 8-64 px upsampling layers: 38 MB of the 1024 px generator in float32).
    packed = [m for m in gen.modules() if getattr(m, "_packed_cache", None) is not None]
    assert packed and all(m._fast_cache[1] is None for m in packed)
    torch.testing.assert_close(packed_image, render(gen, False), **tol)
    assert packed_layers(gen) == 1 + 2 * 4  # 4 px, then upsampling + 3x3 at 8-64 px
    with torch.no_grad():
        # A changed weight invalidates its packed copy (a uniform scale would be demodulated).
        gen.convs[2].conv.weight.add_(torch.randn(gen.convs[2].conv.weight.shape).to(dtype))
    torch.testing.assert_close(render(gen, True), render(gen, False), **tol)
    clone = copy.deepcopy(gen)
    assert packed_layers(clone) == 0
    torch.testing.assert_close(render(clone, True), render(gen, False), **tol)


def test_a_torch_build_without_prepacking_falls_back_to_plain_convolutions(monkeypatch, caplog):
    from csla_core.models import stylegan2
    from csla_core.models.stylegan2 import Generator

    def missing(*args):
        raise RuntimeError("no such operator")

    gen = Generator(size=16).eval().requires_grad_(False)
    wplus = torch.randn(1, gen.n_latent, gen.style_dim)
    with torch.inference_mode():
        expected = gen(wplus, impl="reference")
    monkeypatch.setattr(stylegan2, "_prepack", missing)
    stylegan2._prepacking_works.cache_clear()
    try:
        with torch.inference_mode():
            torch.testing.assert_close(gen(wplus, impl="fast"), expected, rtol=1e-4, atol=1e-5)
        assert "prepacked torch.float32 kernels unavailable (no such operator)" in caplog.text
    finally:
        stylegan2._prepacking_works.cache_clear()  # the next caller probes the real build


def test_exact_fp32_turns_cudnn_tf32_off_and_the_flags_stay_readable(monkeypatch):
    """fp32 on a GPU means float32: cuDNN's TF32 default put the golden codes 1.5e-3 off on an
    H200 (docs/performance.md, "GPU"). The legacy flag is the one set, since torch raises when
    code (here, or a library such as accelerate) reads it after the per-operator flags were
    set."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # restored afterwards
    runtime.exact_cuda_fp32()
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_compact_fp32_stores_the_once_per_photo_models_in_bf16_and_computes_in_fp32(pipes):
    """fp32-compact ("auto" on a CPU without fast bf16, for the memory budget): the encoder's
    style blocks and CLIP are stored in bf16 and widened as they run; the generator, which
    makes every image and is tuned, is fp32's exactly. Only the weights' rounding differs from
    fp32 (at most 2^-9 relative per weight, through 4-6 convolutions per head): the encoder's
    offsets measured 1.6e-3 apart here and at full size (bf16 heads, which also round their
    activations: 2.4e-3), bound 5e-3; embeddings measured cosine 0.99999, bound 0.9999."""
    fp32, bf16 = pipes
    compact = load_pipeline(precision="fp32-compact", **OPTIONS)

    def nbytes(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    heads = [p for block in fp32.encoder.styles for p in block.convs.parameters()]
    assert nbytes(fp32.encoder) - nbytes(compact.encoder) == 2 * sum(p.numel() for p in heads)
    assert nbytes(compact.clip) < 0.52 * nbytes(fp32.clip)
    assert nbytes(compact.generator) == nbytes(fp32.generator)
    assert compact.fingerprints == fp32.fingerprints  # mappers made in fp32 fit
    image = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.inference_mode():
        exact = fp32.encoder(image)
        errors = {
            pipe.precision: float((pipe.encoder(image) - exact).norm() / exact.norm())
            for pipe in (compact, bf16)
        }
        # The per-block path (a copied encoder) computes in fp32 from the bf16 storage too.
        copied = copy.deepcopy(compact.encoder)
        assert not copied._views_intact()
        assert torch.equal(copied(image), compact.encoder(image))
    assert 0 < errors["fp32-compact"] < min(5e-3, errors["bf16"])
    text = [p.clip.encode_text(["a smiling face"]) for p in (fp32, compact)]
    assert float(torch.cosine_similarity(*text)) > 0.9999
    images = [p.clip.encode_images(image) for p in (fp32, compact)]
    assert float(torch.cosine_similarity(*images).min()) > 0.9999
    wplus = fp32.latent_avg[None].clone()
    renders = [p.render(wplus, max_resolution=64) for p in (fp32, compact)]
    assert torch.equal(*renders)
