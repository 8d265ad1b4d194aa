"""Numerical parity with the reference implementations at full FFHQ-1024 size.

The golden arrays were computed by rosinality's StyleGAN2 and e4e's Encoder4Editing on weights
rebuilt here by a documented recipe (fixtures/golden/README.md). Matching them within 1e-4
relative means the real checkpoints load strictly and compute what every published demo computes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from golden_recipe import load_arrays, load_manifest, recipe_state_dict, relative_error

from csla_core import load_pipeline
from csla_core.models.e4e import Encoder4Editing
from csla_core.models.stylegan2 import Generator, GeneratorConfig

# Measured (2-core AMD EPYC AVX-512, torch 2.14.1, every path): <= 1.8e-6, 55x below TOL; a 1%
# gain on one layer's noise strength: 1.7e-3-3.2e-3 (its mean: 2.5e-4 of the std).
TOL = 1e-4
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def g_golden():
    return load_arrays("stylegan2_ffhq1024")


@pytest.fixture(scope="module")
def e_golden():
    return load_arrays("e4e_ffhq1024")


@pytest.fixture(scope="module")
def generator_state():
    manifest = load_manifest("stylegan2_ffhq1024")
    assert manifest["config"] == {
        "size": 1024,
        "style_dim": 512,
        "n_mlp": 8,
        "channel_multiplier": 2,
    }
    generator = Generator(GeneratorConfig(**manifest["config"]))
    return recipe_state_dict(generator, manifest, equalized=True)


@pytest.fixture(scope="module")
def encoder_state():
    manifest = load_manifest("e4e_ffhq1024")
    return recipe_state_dict(Encoder4Editing(), manifest, equalized=False)


@pytest.fixture(scope="module")
def generator(generator_state):
    model = Generator()
    model.load_state_dict(generator_state, strict=True)
    return model.eval().requires_grad_(False)


def check_image(image: torch.Tensor, golden: dict, prefix: str) -> None:
    assert image.shape == (1, 3, 1024, 1024)
    assert relative_error(F.avg_pool2d(image, 16), golden[f"{prefix}_pool16"]) < TOL
    assert relative_error(image[..., 496:528, 496:528], golden[f"{prefix}_crop"]) < TOL
    assert abs(float(image.mean()) - float(golden[f"{prefix}_mean"])) < TOL * float(
        golden[f"{prefix}_std"]
    )
    assert float(image.std()) == pytest.approx(float(golden[f"{prefix}_std"]), rel=TOL)


def test_stylespace_order_matches_reference(generator):
    manifest = load_manifest("stylegan2_ffhq1024")
    names = {id(m): n for n, m in generator.named_modules()}
    ours = [names[id(layer.modulation)] for layer in generator._style_layers()]
    assert ours == manifest["stylespace_order"]
    assert sum(generator.style_dims) == 9088 and len(generator.style_dims) == 26


@torch.inference_mode()
def test_mapping_network_matches(generator, g_golden):
    w = generator.mapping(torch.from_numpy(g_golden["z"]))
    assert relative_error(w, g_golden["w_from_z"]) < TOL


@torch.inference_mode()
def test_stylespace_matches(generator, g_golden):
    w = generator.mapping(torch.from_numpy(g_golden["z"][:1]))
    styles = generator.styles_from_wplus(w)
    for i, s in enumerate(styles):
        assert relative_error(s, g_golden[f"style_{i:02d}"]) < TOL, f"style {i}"


@torch.inference_mode()
def test_image_from_z_matches(generator, g_golden):
    check_image(
        generator.render_z(torch.from_numpy(g_golden["z"][:1]), impl="reference"), g_golden, "img_z"
    )


@torch.inference_mode()
def test_image_from_wplus_matches(generator, g_golden):
    check_image(
        generator(torch.from_numpy(g_golden["wplus"]), impl="reference"), g_golden, "img_wplus"
    )


@torch.inference_mode()
def test_truncated_image_matches(generator, g_golden):
    image = generator.render_z(
        torch.from_numpy(g_golden["z"][1:]),
        truncation=0.7,
        truncation_latent=torch.from_numpy(g_golden["truncation_latent"]),
        impl="reference",
    )
    check_image(image, g_golden, "img_trunc")


@torch.inference_mode()
def test_encoder_matches(encoder_state, e_golden):
    encoder = Encoder4Editing()
    encoder.load_state_dict(encoder_state, strict=True)
    codes = encoder.eval()(torch.from_numpy(e_golden["image"]))
    assert relative_error(codes, e_golden["codes"]) < TOL


@pytest.fixture(scope="module")
def e4e_checkpoint_file(tmp_path_factory, generator_state, encoder_state):
    """A file in the exact format of e4e_ffhq_encode.pt, holding the recipe weights."""
    state = {f"encoder.{k}": v for k, v in encoder_state.items()}
    state.update({f"decoder.{k}": v for k, v in generator_state.items()})
    latent_avg = torch.randn(18, 512, generator=torch.Generator().manual_seed(7))
    opts = {
        "encoder_type": "Encoder4Editing",
        "stylegan_size": 1024,
        "start_from_latent_avg": True,
        "lr": 0.0001,
    }
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": opts}, path)
    return path, latent_avg


def test_e4e_checkpoint_loads_through_load_pipeline(e4e_checkpoint_file, g_golden, e_golden):
    path, latent_avg = e4e_checkpoint_file
    pipe = load_pipeline(e4e_path=path, device="cpu", with_clip=False)
    assert not pipe.random_weights and pipe.notice == ""
    assert pipe.sources == {"generator": str(path), "encoder": str(path)}
    torch.testing.assert_close(pipe.latent_avg, latent_avg)  # a copy: exact
    wplus = pipe.invert_aligned(torch.from_numpy(e_golden["image"]))
    assert wplus.shape == (1, 18, 512)
    # W+ = encoder output + latent_avg
    assert relative_error(wplus - latent_avg, e_golden["codes"]) < TOL
    check_image(pipe.render(torch.from_numpy(g_golden["wplus"])), g_golden, "img_wplus")


def test_rosinality_checkpoint_loads_generator_only(tmp_path, generator_state, g_golden):
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    w_avg = torch.from_numpy(g_golden["truncation_latent"])[0]
    torch.save({"g_ema": generator_state, "latent_avg": w_avg}, path)
    pipe = load_pipeline(stylegan2_path=path, with_encoder=False, with_clip=False, device="cpu")
    assert pipe.encoder is None
    assert pipe.latent_avg.shape == (18, 512)
    torch.testing.assert_close(pipe.latent_avg[5], w_avg)  # a copy: exact
    w = pipe.generator.mapping(torch.from_numpy(g_golden["z"][:1]))
    check_image(pipe.render(w), g_golden, "img_z")


@pytest.mark.parametrize("impl", ["batched", "fast"])
@torch.inference_mode()
def test_faster_paths_match_golden_too(generator, g_golden, impl):
    # The GPU (batched) and CPU (fast) paths rearrange the same maths: they must still meet the
    # reference tolerance.
    wplus = torch.from_numpy(g_golden["wplus"])
    check_image(generator(wplus, impl=impl), g_golden, "img_wplus")


# The bound for reduced precision (fixtures/golden/README.md): 2e-2 relative. Measured
# in bf16 (2-core AMD EPYC with AVX512-BF16, torch 2.15): image 1.3e-2 (16x16 means) and 6.8e-3
# (centre crop). Below 1e-4 would mean bf16 was not used at all (fp32 paths agree to 2e-6).
BF16_TOL = 2e-2


def test_bf16_pipeline_stays_within_tolerance_of_golden(e4e_checkpoint_file, g_golden, e_golden):
    """The CPU bf16 path (weights stored in bf16, native kernels) on the real-size golden data:
    encoder codes and the full 1024 image, through load_pipeline as a user gets it."""
    path, latent_avg = e4e_checkpoint_file
    pipe = load_pipeline(e4e_path=path, device="cpu", with_clip=False, precision="bf16")
    assert pipe.precision == "bf16"
    assert pipe.generator.synthesis_dtype == torch.bfloat16
    # The encoder's backbone stays float32 (in bf16 the codes measured 1.9e-2 from these, too
    # near the bound), its style blocks are bf16: the codes measured 5.1e-3.
    encoder = pipe.encoder
    assert encoder.input_layer[0].weight.dtype == torch.float32
    assert {p.dtype for p in encoder.body.parameters()} == {torch.float32}
    assert {p.dtype for p in encoder.styles.parameters()} == {torch.bfloat16, torch.float32}
    assert encoder.styles[0].convs[0].weight.dtype == torch.bfloat16
    codes = pipe.invert_aligned(torch.from_numpy(e_golden["image"])) - latent_avg
    assert 1e-4 < relative_error(codes, e_golden["codes"]) < BF16_TOL
    image = pipe.render(torch.from_numpy(g_golden["wplus"]))
    assert image.dtype == torch.float32 and image.shape == (1, 3, 1024, 1024)
    pooled = relative_error(F.avg_pool2d(image, 16), g_golden["img_wplus_pool16"])
    crop = relative_error(image[..., 496:528, 496:528], g_golden["img_wplus_crop"])
    assert 1e-4 < pooled < BF16_TOL and 1e-4 < crop < BF16_TOL, (pooled, crop)
    # Mappers belong to the models, not to their precision: the fingerprint is of the weights
    # as loaded.
    fp32 = load_pipeline(e4e_path=path, device="cpu", with_clip=False, with_encoder=False)
    assert pipe.fingerprints["generator"] == fp32.fingerprints["generator"]


# Half the reduced-precision bound: between the codes with a bf16 backbone and a float32 one.
GPU_CODES_TOL = 1e-2
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here: the GPU precisions are checked where one is "
    "(docs/performance.md, 'GPU')",
)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_pipeline_stays_within_tolerance_of_golden(
    e4e_checkpoint_file, g_golden, e_golden, precision
):
    """A GPU pipeline as a user gets it (the batched path; fp16 and bf16 under autocast) on
    the real-size golden data: fp32 within the reference tolerance (cuDNN's TF32 would be
    about 1e-3 off), fp16 and bf16 within the reduced-precision bound."""
    path, latent_avg = e4e_checkpoint_file
    pipe = load_pipeline(e4e_path=path, device="cuda", with_clip=False, precision=precision)
    assert pipe.precision == precision and pipe.impl == "batched"
    codes = pipe.invert_aligned(torch.from_numpy(e_golden["image"])).cpu() - latent_avg
    image = pipe.render(torch.from_numpy(g_golden["wplus"])).cpu()
    errors = {
        "codes": relative_error(codes, e_golden["codes"]),
        "image 16x16 means": relative_error(F.avg_pool2d(image, 16), g_golden["img_wplus_pool16"]),
        "image centre crop": relative_error(
            image[..., 496:528, 496:528], g_golden["img_wplus_crop"]
        ),
    }
    print(
        f"\n{torch.cuda.get_device_name()} {precision}: "
        + ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
    )
    bound = TOL if precision == "fp32" else BF16_TOL
    assert max(errors.values()) < bound, errors
    if precision != "fp32":  # below 1e-4, reduced precision was not used at all
        assert min(errors.values()) > 1e-4, errors
        # The encoder's backbone stays float32 (test_precision.py): measured on an H200, the
        # codes were 1.7e-2 in bf16 with the backbone in bf16, 7.0e-3 with it in float32.
        assert errors["codes"] < GPU_CODES_TOL, errors
