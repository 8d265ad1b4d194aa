"""Identity metric: our MobileFaceNet on the shared checkpoint and real photos; weight formats."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED

from csla_core.cli import main as cli_main
from csla_core.errors import WeightsError
from csla_core.models.face_id import (
    MobileFaceNet,
    embed_photo,
    face_weights_format,
    load_face_embedder,
    load_mobilefacenet,
    similarity_transform,
    warp_faces,
)

ASSETS = SHARED / "real-assets"
CKPT = ASSETS / "weights" / "mobilefacenet_casia_xiaoccer_068.ckpt"
IMAGES = ASSETS / "images"
needs_assets = pytest.mark.skipif(
    not CKPT.is_file() or not IMAGES.is_dir(),
    reason=f"the MobileFaceNet checkpoint and photos of {ASSETS} are not here (third-party "
    "files, never committed)",
)

PEOPLE = {
    "obama": ["us_government/obama.jpg", "us_government/obama2.jpg", "us_government/obama3.jpg"],
    "biden": ["us_government/biden.jpg", "us_government/biden2.jpg"],
    "celeba_081680": ["celeba_in_the_wild/celeba_081680.jpg"],
    "rose_leslie": ["misc_celebrity/rose_leslie.jpg"],
    "unsplash_rDEOVtE7vOs": ["permissive_license/unsplash_rDEOVtE7vOs.jpg"],
}


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_mobilefacenet(CKPT)


@needs_assets
def test_same_person_scores_clearly_above_different_people(net):
    emb = {
        (who, f): F.normalize(embed_photo(net, IMAGES / f), dim=0)
        for who, files in PEOPLE.items()
        for f in files
    }
    same, different = [], []
    for (a, ea), (b, eb) in itertools.combinations(emb.items(), 2):
        (same if a[0] == b[0] else different).append(float(ea @ eb))
    print(
        f"\nMobileFaceNet cosine: same person {min(same):.2f}..{max(same):.2f} "
        f"({len(same)} pairs), different people {min(different):.2f}..{max(different):.2f} "
        f"({len(different)} pairs)"
    )
    # The checkpoint's notes report 0.64-0.75 same / -0.22..0.37 different on these photos.
    assert min(same) > 0.55
    assert max(different) < 0.45
    assert min(same) - max(different) > 0.2


@needs_assets
def test_fixed_ffhq_template_agrees_with_detected_landmarks(net):
    """Renders are embedded without a detector (FFHQ's fixed 5 points); on real FFHQ-aligned
    faces that must match the embedding from MTCNN's own points, and still recognise the
    person in an unaligned photo."""
    from csla_core.faces import load_image
    from csla_core.imaging import pil_to_tensor

    paths = sorted((IMAGES / "ffhq_aligned_1024").glob("*.png"))
    paths.append(IMAGES / "celebahq_aligned_1024" / "celebahq_081680.jpg")
    renders = torch.cat([pil_to_tensor(load_image(p), 256) for p in paths])
    fixed = F.normalize(load_face_embedder(CKPT)(renders), dim=1)
    detected = torch.stack([F.normalize(embed_photo(net, p), dim=0) for p in paths])
    cos = fixed @ detected.T
    print(
        f"\nfixed template vs detected points: same image {cos.diag().min():.2f}, "
        f"other images <= {(cos - 2 * torch.eye(len(paths))).max():.2f}"
    )
    assert cos.diag().min() > 0.85
    assert (cos - 2 * torch.eye(len(paths))).max() < 0.5
    wild = F.normalize(embed_photo(net, IMAGES / "celeba_in_the_wild" / "celeba_081680.jpg"), dim=0)
    assert float(fixed[-1] @ wild) > 0.85  # the same woman, aligned crop vs original photo


def test_similarity_warp_puts_points_on_the_template():
    angle, scale, shift = 0.3, 0.4, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.array([[100.0, 120], [160, 118], [130, 150], [105, 185], [155, 184]])
    dst = src @ rot.T + shift
    # float64, measured 9.2e-13 (default rtol 1e-5, atol 1e-8); a wrong sign or scale: >= 0.1.
    assert np.allclose(similarity_transform(src, dst), np.hstack([rot, shift[:, None]]))
    # A bright dot at each landmark lands at the template point of the crop.
    image = -torch.ones(1, 3, 256, 256)
    crops = []
    for x, y in src:
        dot = image.clone()
        dot[..., int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 1.0
        crops.append(warp_faces(dot, src, template=dst, size=(200, 200))[0, 0])
    for crop, (x, y) in zip(crops, dst):
        peak = divmod(int(crop.argmax()), 200)
        assert abs(peak[0] - y) <= 1.5 and abs(peak[1] - x) <= 1.5  # a 3x3 px dot, rounded


def test_identity_weights_formats_are_told_apart(tmp_path):
    torch.manual_seed(0)
    mobile = MobileFaceNet()
    assert sum(p.numel() for p in mobile.parameters()) == 999_552  # the checkpoint's size
    torch.save({"epoch": 1, "net_state_dict": mobile.state_dict()}, tmp_path / "mobile.ckpt")
    embed = load_face_embedder(tmp_path / "mobile.ckpt")
    assert embed(torch.rand(2, 3, 64, 64) * 2 - 1).shape == (2, 256)  # image + mirror

    from facenet_pytorch import InceptionResnetV1

    facenet = InceptionResnetV1(pretrained=None, classify=False).eval()
    torch.save(facenet.state_dict(), tmp_path / "facenet.pt")
    assert face_weights_format(facenet.state_dict()) == "inception_resnet_v1"
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    got = load_face_embedder(tmp_path / "facenet.pt")(images)
    with torch.no_grad():
        want = facenet(
            F.interpolate(
                images, size=(160, 160), mode="bilinear", align_corners=False, antialias=True
            )
        )
    # Measured 0 (the same ops); fp32 vs float64: 6.7e-8; images in [0, 1] for [-1, 1]: 2.2e-3.
    assert torch.allclose(got, want, atol=1e-5)

    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="MobileFaceNet checkpoint .* InceptionResnetV1"):
        load_face_embedder(tmp_path / "other.pt")
    truncated = {k: v for k, v in mobile.state_dict().items() if not k.startswith("blocks.14")}
    torch.save(truncated, tmp_path / "truncated.pt")
    with pytest.raises(WeightsError, match="do not fit"):
        load_face_embedder(tmp_path / "truncated.pt")
    with pytest.raises(WeightsError, match="no face-recognition weights"):
        load_face_embedder(tmp_path / "missing.pt")


@needs_assets
def test_evaluate_reports_identity_with_the_mobilefacenet_file(tmp_path, capsys):
    out = tmp_path / "table.json"
    args = [
        "evaluate",
        "--tiny",
        "--prompts",
        "a smiling face",
        "--n-images",
        "1",
        "--baseline-steps",
        "2",
        "--resolution",
        "32",
        "--json",
        str(out),
    ]
    assert cli_main([*args, "--identity-weights", str(CKPT)]) == 0
    printed = capsys.readouterr().out
    assert "LPIPS unavailable:" in printed  # and says why
    baseline = json.loads(out.read_text())["rows"][1]
    assert baseline["method"] == "optimisation baseline"
    assert isinstance(baseline["identity"], float) and -1.0 <= baseline["identity"] <= 1.0
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli_main([*args, "--identity-weights", str(tmp_path / "junk.pt")]) == 2
    assert "not a tensors-only torch file" in capsys.readouterr().err
