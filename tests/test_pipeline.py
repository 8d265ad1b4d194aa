"""The public entry point in random-weights mode: full-size architecture, no files, no downloads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from csla_core import load_pipeline
from csla_core.errors import CSLAError
from csla_core.imaging import resize_batch, tensor_to_pil
from csla_core.models.stylegan2 import ModulatedConv2d
from csla_core.pipeline import RANDOM_WEIGHTS_NOTICE


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(random_weights=True, device="cpu")


@pytest.fixture(scope="module")
def small_pipe():
    return load_pipeline(random_weights=True, device="cpu", size=64, seed=3, with_clip=False)


def test_random_weights_pipeline_is_full_size_and_says_so(pipe):
    assert pipe.random_weights and pipe.notice == RANDOM_WEIGHTS_NOTICE
    assert "RANDOM-WEIGHTS MODE" in pipe.notice and "download" in pipe.notice
    assert pipe.sources == {
        "generator": "random",
        "encoder": "random",
        "clip": "random",
        "mappers": "random",
    }
    assert pipe.clip is not None and pipe.clip.embed_dim == 512
    assert pipe.generator.size == 1024 and pipe.n_latent == 18
    assert sum(pipe.generator.style_dims) == 9088
    assert pipe.latent_avg.shape == (18, 512)
    n_params = sum(p.numel() for p in pipe.encoder.parameters())
    assert n_params > 250_000_000  # the real e4e encoder's size, not a stand-in
    assert not any(p.requires_grad for p in pipe.generator.parameters())


def test_render_full_size_and_preview(pipe):
    wplus = pipe.latent_avg[None]
    image = pipe.render(wplus, noise_mode="const")
    assert image.shape == (1, 3, 1024, 1024) and torch.isfinite(image).all()
    assert torch.equal(image, pipe.render(wplus, noise_mode="const"))  # stored noise: repeatable
    preview = pipe.render(wplus, max_resolution=256)
    assert preview.shape == (1, 3, 256, 256)
    # the preview is the skip branch of the same render, not another picture: it is what the
    # full image is built on, so they are strongly correlated
    full_small = resize_batch(image, 256)
    corr = torch.corrcoef(torch.stack([full_small.flatten(), preview.flatten()]))[0, 1]
    assert corr > 0.5, f"preview/full correlation {corr:.2f}"


def test_w_and_wplus_and_stylespace_render_the_same(small_pipe):
    w = small_pipe.generator.mapping(
        torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    )
    from_w = small_pipe.render(w)
    from_wplus = small_pipe.render(w[:, None].expand(-1, small_pipe.n_latent, -1))
    from_s = small_pipe.render_styles(small_pipe.styles(w))
    assert torch.equal(from_w, from_wplus) and torch.equal(from_w, from_s)
    # batch items are independent. Another batch size picks other oneDNN kernels: measured 7.2e-7
    # on a 2-core AMD EPYC (AVX-512), torch 2.14.1; bound 14x that; the other item's image: 0.82.
    alone = small_pipe.render(w[1:])
    assert float((alone - from_w[1:]).norm() / from_w[1:].norm()) < 1e-5


def test_editing_one_stylespace_channel_changes_the_image(small_pipe):
    wplus = small_pipe.latent_avg[None]
    styles = small_pipe.styles(wplus)
    base = small_pipe.render_styles(styles)
    edited = [s.clone() for s in styles]
    edited[5][0, 7] += 5.0
    changed = small_pipe.render_styles(edited)
    assert (changed - base).abs().max() > 1e-3  # measured 0.76
    assert torch.equal(small_pipe.render_styles([s.clone() for s in styles]), base)


def test_noise_modes(small_pipe):
    wplus = small_pipe.latent_avg[None]
    seeded = [
        small_pipe.render(wplus, "random", generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])
    assert not torch.equal(small_pipe.render(wplus, "none"), small_pipe.render(wplus, "const"))
    with pytest.raises(ValueError, match="noise_mode"):
        small_pipe.render(wplus, "sometimes")


def test_invert_aligned_adds_latent_avg_and_resizes(small_pipe):
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    wplus = small_pipe.invert_aligned(image)
    assert wplus.shape == (1, small_pipe.n_latent, 512)
    raw = small_pipe.encoder(image)
    torch.testing.assert_close(wplus, raw + small_pipe.latent_avg)  # the same sum: bit-identical
    big = torch.nn.functional.interpolate(image, scale_factor=4, mode="nearest")
    # Resizing back to 256 rounds by 2.4e-7 (max abs, in and out, AMD EPYC AVX-512, torch 2.14.1):
    # 1e-5 is 40x that, elementwise 140x.
    torch.testing.assert_close(small_pipe.invert_aligned(big), wplus, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected \[B, 3, H, W\]"):
        small_pipe.invert_aligned(image[0])


def test_random_weights_are_seeded():
    a = load_pipeline(random_weights=True, device="cpu", size=32, seed=0, with_clip=False)
    b = load_pipeline(random_weights=True, device="cpu", size=32, seed=0, with_clip=False)
    c = load_pipeline(random_weights=True, device="cpu", size=32, seed=1, with_clip=False)
    torch.testing.assert_close(a.latent_avg, b.latent_avg)  # bit-identical here
    assert not torch.allclose(a.latent_avg, c.latent_avg)


def test_tensor_to_pil_maps_generator_range_to_pixels():
    images = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    pictures = tensor_to_pil(images)
    assert len(pictures) == 2 and pictures[0].size == (4, 1)
    assert [pictures[0].getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 255]


@pytest.mark.parametrize("noise_mode", ["const", "random", "none"])
def test_faster_paths_match_reference_path(small_pipe, noise_mode):
    generator = small_pipe.generator
    w = generator.mapping(torch.randn(3, 512, generator=torch.Generator().manual_seed(4)))
    with torch.inference_mode():
        for resolution in (None, 16):
            ref = generator(
                w, noise_mode, resolution, torch.Generator().manual_seed(9), "reference"
            )
            for impl in ("batched", "fast"):
                out = generator(w, noise_mode, resolution, torch.Generator().manual_seed(9), impl)
                assert out.shape == ref.shape
                # Same maths (float64: 4e-15); fp32 on a 2-core AMD EPYC (AVX-512), torch 2.14.1:
                # fast 1.4e-6, batched 0. Bound 20x that; a 1% gain on one noise input: 6.5e-4.
                assert float((out - ref).norm() / ref.norm()) < 3e-5, impl
    with pytest.raises(ValueError, match="impl must be one of"):
        generator(w, impl="native")
    assert small_pipe.impl == "fast"  # what users get by default


def test_invert_a_real_photo_and_paste_back(small_pipe):
    import numpy as np
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())  # public domain, one face
    inversion = small_pipe.invert(photo)
    assert len(inversion.faces) == 1 and inversion.face_index == 0
    assert inversion.wplus.shape == (1, small_pipe.n_latent, 512)
    assert inversion.aligned.image.size == (small_pipe.generator.size,) * 2
    # the unedited crop pasted back gives the photo back (the crop is resampled twice)
    pasted = np.asarray(small_pipe.paste(inversion, inversion.aligned.image), dtype=np.float64)
    mse = np.mean((pasted - np.asarray(photo, dtype=np.float64)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30
    # a rendered face (a tensor) pastes back at the photo's own size
    face = small_pipe.render(inversion.wplus)
    assert small_pipe.paste(inversion, face).size == photo.size


def test_fast_path_supports_gradients():
    """The optimisation baseline and training differentiate through the generator."""
    pipe = load_pipeline(random_weights=True, device="cpu", size=64, seed=3, with_clip=False)
    # At the average latent of these random weights the gradient is ill-conditioned (float32
    # error 60x that at a random w): the case that showed the CPU-to-CPU spread.
    generator, start = pipe.generator, pipe.latent_avg[None]

    def grads(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        generator.to(dtype)
        out = {}
        for impl in ("reference", "batched", "fast"):
            w = start.to(dtype).detach().requires_grad_(True)
            generator(w, impl=impl).square().mean().backward()
            out[impl] = w.grad.double()
        return out

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    exact, single = grads(torch.float64), grads(torch.float32)
    truth = exact["reference"]
    assert truth.abs().sum() > 0
    # Same maths: in float64 the paths agree to rounding (measured 2.5e-15), so any change in
    # the maths (a sign, a gain, a dropped term) fails here on every CPU.
    for impl in ("batched", "fast"):
        assert error(exact[impl], truth) < 1e-10, impl
    # Usable in float32: measured against float64, the reference path's gradient is off by
    # 2.6e-6 and the fast path's by 5.5e-5 (AMD EPYC, AVX-512; fast vs reference was 2.0e-4 on
    # a Xeon with AMX, where oneDNN sums in another order). Bound: 5x the largest of these.
    for impl, grad in single.items():
        assert error(grad, truth) < 1e-3, impl


def test_reduced_precision_matches_fp32_within_tolerance():
    """bf16 on a CPU (weights stored in bf16, native kernels) stays within 2e-2 of fp32.

    2e-2 is the documented bf16 tolerance (README of tests/fixtures/golden). Measured on a 2-core
    AMD EPYC (AVX512-BF16), torch 2.15: render 8.2e-3. That is bf16 rounding, not summation
    order (fp32 differences are 1e-6), so it hardly moves with the CPU. The lower bound 1e-4
    fails when bf16 is not used at all.
    """
    fp32 = load_pipeline(random_weights=True, device="cpu", size=64, seed=3, with_clip=False)
    bf16 = load_pipeline(
        random_weights=True, device="cpu", size=64, seed=3, with_clip=False, precision="bf16"
    )
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    w = fp32.generator.mapping(torch.randn(2, 512, generator=torch.Generator().manual_seed(6)))
    reference, reduced = fp32.render(w), bf16.render(w)
    assert reduced.dtype == torch.float32
    assert 1e-4 < float((reduced - reference).norm() / reference.norm()) < 2e-2
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # The encoder's style blocks run in bf16, its backbone in float32 (5.1e-3 on the golden
    # data, test_golden_parity; 2.3e-3 here): the codes, W+ less latent_avg, to the same 2e-2.
    codes = [p.invert_aligned(image) - p.latent_avg for p in (fp32, bf16)]
    assert 1e-4 < float((codes[1] - codes[0]).norm() / codes[0].norm()) < 2e-2
    with pytest.raises(ValueError, match="precision"):
        load_pipeline(random_weights=True, device="cpu", size=32, with_clip=False, precision="fp8")


@pytest.mark.parametrize(
    "device, words",
    [("cuda:99", "cuda:99 was asked for"), ("gpu", "'gpu' is not a device")],
)
def test_an_unusable_device_is_a_clear_error(device, words):
    # Not torch's driver traceback at the first model call: a message saying what to do instead.
    with pytest.raises(CSLAError, match=words):
        load_pipeline(random_weights=True, device=device, size=32, with_clip=False)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 2), (5, 5), (8, 8), (3, 6)])
def test_polyphase_upsampling_equals_transposed_convolution_then_blur(height, width):
    """The fast path's upsampling (four phase convolutions written into the blur's padded
    input) is the reference's transposed convolution + FIR blur, borders included; bands of
    the last level are wider than tall."""
    from csla_core.models.ops import make_fir_kernel, upfirdn2d
    from csla_core.models.stylegan2 import POLYPHASE_ORDER, POLYPHASE_TAPS, _polyphase_upsample_blur

    rng = torch.Generator().manual_seed(height * 10 + width)
    x = torch.randn(1, 5, height, width, generator=rng)
    weight = torch.randn(7, 5, 3, 3, generator=rng)  # [out, in, k, k]
    bias = torch.randn(7, generator=rng)
    blur = make_fir_kernel((1, 3, 3, 1)) * 4
    expected = upfirdn2d(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), blur, pad=(1, 1))
    expected = expected + bias.view(1, -1, 1, 1)
    phases = [
        weight[:, :, POLYPHASE_TAPS[a]][:, :, :, POLYPHASE_TAPS[b]].contiguous(
            memory_format=torch.channels_last
        )
        for a, b in POLYPHASE_ORDER
    ]
    with_margin = F.pad(x, (0, 1, 0, 1)).contiguous(memory_format=torch.channels_last)
    held = [with_margin]
    out = _polyphase_upsample_blur(held, phases, blur, bias)
    assert held == []  # the input is handed over, to be freed as early as possible
    assert out.shape == (1, 7, 2 * height + 1, 2 * width + 1)  # one margin row and column
    # Measured (AMD EPYC AVX-512, torch 2.14.1): within 1/11 of this bound, max abs 1.9e-6 (float64:
    # 7e-15); a 1% blur gain: 0.16.
    torch.testing.assert_close(out[:, :, : 2 * height, : 2 * width], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("noise_mode", ["const", "random"])
def test_last_level_in_bands_is_the_whole_computation(monkeypatch, noise_mode, dtype):
    """The fast path computes its last level in horizontal bands (to hold no whole
    activation of it): the picture is the one computed whole, band edges included, in both
    CPU precisions (bf16 bands have twice the rows)."""
    from csla_core.models import stylegan2
    from csla_core.models.stylegan2 import Generator

    torch.manual_seed(3)
    # 64 px: the last level reads 32 x 32 input rows.
    generator = Generator(size=64).eval().requires_grad_(False).prepare_synthesis(dtype)
    w = generator.mapping(torch.randn(2, 512, generator=torch.Generator().manual_seed(5)))

    def render() -> torch.Tensor:
        with torch.inference_mode():
            return generator(w, noise_mode, None, torch.Generator().manual_seed(9), "fast")

    monkeypatch.setattr(stylegan2, "BANDED_FROM", 2 * generator.size)  # never banded
    whole = render()
    monkeypatch.setattr(stylegan2, "BANDED_FROM", generator.size)
    monkeypatch.setattr(stylegan2, "BAND_ROWS", 3)  # 11 bands in float32, 6 in bf16
    banded = render()
    # The same sums per pixel: measured bit-identical (hidden-AMX Xeon, torch 2.15), also at
    # 1024 px. Bound: the fast path's float32 bound against the reference path (above).
    assert float((banded - whole).norm() / whole.norm()) < 3e-5
    # The halo is what makes it exact: one row less changes the picture near every cut
    # (measured 0.15 largest difference at 1024 px).
    monkeypatch.setattr(stylegan2, "BAND_HALO", stylegan2.BAND_HALO - 1)
    assert float((render() - whole).norm() / whole.norm()) > 1e-3


def test_last_level_in_bands_keeps_gradients(small_pipe, monkeypatch):
    """The optimisation baseline differentiates through the fast path: the bands give the
    gradient computed whole."""
    from csla_core.models import stylegan2

    generator = small_pipe.generator

    def gradient() -> torch.Tensor:
        w = small_pipe.latent_avg[None].clone().requires_grad_(True)
        generator(w, "const", None, None, "fast").square().mean().backward()
        return w.grad

    monkeypatch.setattr(stylegan2, "BANDED_FROM", 2 * generator.size)
    whole = gradient()
    monkeypatch.setattr(stylegan2, "BANDED_FROM", generator.size)
    monkeypatch.setattr(stylegan2, "BAND_ROWS", 5)
    # Measured 2.5e-7 (summation order in the backward pass); bound as the float32 paths'.
    assert float((gradient() - whole).norm() / whole.norm()) < 3e-5


@pytest.mark.parametrize("resolution", [None, 16])
def test_synthesis_flops_are_what_torch_counts_in_the_modulated_convolutions(
    small_pipe, resolution
):
    # torch's own FLOP counter over the batched path: every convolution inside a modulated
    # convolution, less its FIR blur's (the blur is not counted by synthesis_flops).
    gen = small_pipe.generator
    with FlopCounterMode(display=False) as counter:
        gen(small_pipe.latent_avg[None], max_resolution=resolution, impl="batched")
    counts = counter.get_flop_counts()

    def convolutions(name: str) -> int:
        ops = counts.get(f"Generator.{name}", {})
        return sum(n for op, n in ops.items() if str(op) == "aten.convolution")

    layers = [name for name, m in gen.named_modules() if isinstance(m, ModulatedConv2d)]
    counted = sum(convolutions(name) - convolutions(f"{name}.blur") for name in layers)
    assert counted == gen.synthesis_flops(resolution) > 0
    assert gen.synthesis_flops(16) < gen.synthesis_flops() == gen.synthesis_flops(64)


def test_full_size_render_holds_no_whole_last_level_activation(pipe):
    """Memory: at 1024 px one activation of the last level is 135 MB in float32, and holding
    two at once (input and output of a convolution) was most of the app's peak over its
    models. Banded, the largest block a render allocates is a 512 px level's."""
    from torch.profiler import profile

    generator = pipe.generator
    itemsize = torch.empty(0, dtype=generator.synthesis_dtype).element_size()
    with torch.inference_mode(), profile(profile_memory=True) as prof:
        image = pipe.render(pipe.latent_avg[None])
    assert image.shape[-1] == generator.size == 1024
    largest = max(event.cpu_memory_usage for event in prof.events())
    last_level = 32 * 1025 * 1025 * itemsize  # 32 channels at 1024 px, with the zero margin
    one_below = 64 * 516 * 516 * itemsize  # the 512 px level's blur input, its largest
    # Measured in float32: 65 MiB (the 512 px level's blur input); 129 MiB unbanded.
    assert 0 < largest <= one_below < last_level


def test_fast_path_follows_new_weights():
    """The fast path caches kernels derived from the weights; loading new weights (a
    checkpoint, a training step) must change the picture exactly as the reference path does."""
    pipe = load_pipeline(random_weights=True, device="cpu", size=32, seed=5, with_clip=False)
    other = load_pipeline(random_weights=True, device="cpu", size=32, seed=6, with_clip=False)
    generator, w = pipe.generator, pipe.latent_avg[None]
    with torch.inference_mode():
        before = generator(w, impl="fast")
    generator.load_state_dict(other.generator.state_dict())
    with torch.inference_mode():
        after, reference = generator(w, impl="fast"), generator(w, impl="reference")
    assert float((after - before).norm() / before.norm()) > 0.1  # measured 1.12
    # As in test_faster_paths_match_reference_path: measured 1.7e-6 (AMD EPYC AVX-512, torch 2.14.1).
    assert float((after - reference).norm() / reference.norm()) < 3e-5
