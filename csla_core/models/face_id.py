"""Face identity embeddings for the identity metric: MobileFaceNet or facenet's InceptionResnetV1.

[ours] ``load_face_embedder(path)`` reads a local state dict and tells the two formats apart by
their keys (nothing is downloaded):
- MobileFaceNet (Chen et al. 2018, "MobileFaceNets"), the key layout of Xiaoccer's
  MobileFaceNet_Pytorch checkpoints (``{'epoch', 'net_state_dict'}``): input 112 x 96 (H x W)
  RGB, (x - 127.5) / 128, the face warped by a 5-point similarity transform onto the SphereFace
  template; 128-d output, the embedding of the image and of its mirror image concatenated
  (256-d), as its author evaluates it.
- facenet-pytorch ``InceptionResnetV1``: the whole render resized to 160 x 160 (renders are
  already aligned faces), range about [-1, 1].
Renders are FFHQ-aligned, so their 5 points sit at fixed places: the FFHQ 5-point template
below, scaled to the render size, warped to the SphereFace template (no detector needed).
Photos go through ``faces.FaceDetector`` landmarks (``embed_photo``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

FaceEmbedder = Callable[[torch.Tensor], torch.Tensor]  # [B,3,H,W] in [-1,1] -> [B, E]

MOBILEFACENET_INPUT = (112, 96)  # H, W
# SphereFace's 5-point template for 96 x 112 crops (x, y in pixels): eyes, nose, mouth corners.
SPHEREFACE_TEMPLATE = np.array(
    [
        [30.2946, 51.6963],
        [65.5318, 51.5014],
        [48.0252, 71.7366],
        [33.5493, 92.3655],
        [62.7299, 92.2041],
    ]
)
# Mean 5 points of FFHQ's aligned faces at 512 px (the face template of facexlib / GFPGAN; eye
# points on the pupils, like MTCNN's). Cross-check on the 4 FFHQ images in shared/real-assets:
# MTCNN's eye points lie within 12 px of it at 1024 px, nose and mouth corners within 40 px
# (expressions differ); MobileFaceNet embeddings of those images through this fixed template and
# through MTCNN's own points have cosine 0.90-0.96 (different people: -0.2..0.36).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
# Bottleneck stages of MobileFaceNet: (expansion t, output channels c, repeats n, stride s).
MOBILEFACENET_STAGES = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBN(nn.Module):
    """Convolution (no bias) + batch norm + optional PReLU; keys ``conv``, ``bn``, ``prelu``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise (stride), 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet: [B, 3, 112, 96] normalised faces -> [B, 128] embeddings."""

    def __init__(self, embedding_dim: int = 128) -> None:
        super().__init__()
        self.conv1 = ConvBN(3, 64, 3, stride=2, padding=1)
        self.dw_conv1 = ConvBN(64, 64, 3, padding=1, groups=64)
        blocks, cin = [], 64
        for t, c, n, s in MOBILEFACENET_STAGES:
            for i in range(n):
                blocks.append(Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBN(cin, 512, 1)
        # Global depthwise convolution over the 7 x 6 map (instead of average pooling).
        self.linear7 = ConvBN(512, 512, (7, 6), groups=512, activation=False)
        self.linear1 = ConvBN(512, embedding_dim, 1, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        return self.linear1(self.linear7(self.conv2(x))).flatten(1)


# ---------------------------------------------------------------------- alignment
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift; no reflection) taking points
    ``src`` [N, 2] onto ``dst`` [N, 2]; returns the 2 x 3 matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    # x' = a x - b y + tx ; y' = b x + a y + ty  -> linear in (a, b, tx, ty).
    rows = []
    for x, y in src:
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def warp_faces(
    images: torch.Tensor,
    landmarks: np.ndarray,
    template: np.ndarray = SPHEREFACE_TEMPLATE,
    size: tuple[int, int] = MOBILEFACENET_INPUT,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] whose faces have 5 points ``landmarks`` ([5, 2], or
    [B, 5, 2]; pixel-index coordinates) -> crops [B, 3, size] in [-1, 1] with the points on
    ``template``. Outside the image is black. Large faces are first shrunk with antialiasing
    so the bilinear warp does not alias."""
    points = np.asarray(landmarks, np.float64)
    if points.ndim == 2:
        points = np.broadcast_to(points, (images.shape[0], 5, 2))
    crops = []
    for image, pts in zip(images, points):
        matrix = similarity_transform(pts, template)
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        image = image[None].float()
        if scale < 0.75:  # face much larger than the template: shrink to about its size
            factor = scale * 1.25
            h, w = image.shape[-2:]
            out_h, out_w = max(1, round(h * factor)), max(1, round(w * factor))
            image = F.interpolate(
                image, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
            )
            pts = (pts + 0.5) * np.array([out_w / w, out_h / h]) - 0.5
            matrix = similarity_transform(pts, template)
        crops.append(_affine_sample(image, matrix, size))
    return torch.cat(crops)


def _affine_sample(image: torch.Tensor, matrix: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear sampling of ``image`` [1, 3, H, W] at the inverse of ``matrix`` (image -> crop)."""
    h, w = image.shape[-2:]
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = torch.tensor(np.linalg.inv(full)[:2], dtype=torch.float32, device=image.device)
    ys, xs = torch.meshgrid(
        torch.arange(size[0], dtype=torch.float32, device=image.device),
        torch.arange(size[1], dtype=torch.float32, device=image.device),
        indexing="ij",
    )
    ones = torch.ones_like(xs)
    src = torch.stack([xs, ys, ones], dim=-1) @ inverse.T  # [h, w, 2] source pixel coordinates
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], dim=-1)
    # Sample in [0, 1] so that "outside" (zeros) is black, as an image warp pads it.
    crop = F.grid_sample(
        (image + 1) / 2, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return crop * 2 - 1


def ffhq_landmarks(size: int) -> np.ndarray:
    """The FFHQ 5-point template scaled to a ``size`` px aligned face (pixel-index coords)."""
    return (FFHQ_TEMPLATE_512 + 0.5) * (size / 512) - 0.5


# ---------------------------------------------------------------------- loading
def _read_state(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"no face-recognition weights at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals and corrupt files: one message for the user
        raise WeightsError(f"{path} is not a tensors-only torch file: {exc}") from exc
    for wrapper in ("net_state_dict", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict")
    return state


def face_weights_format(state: Mapping[str, torch.Tensor]) -> str:
    """ "mobilefacenet" or "inception_resnet_v1", from the state dict's keys."""
    keys = set(state)
    if {"conv1.conv.weight", "dw_conv1.conv.weight", "linear1.conv.weight"} <= keys:
        return "mobilefacenet"
    if {"conv2d_1a.conv.weight", "last_linear.weight", "last_bn.weight"} <= keys:
        return "inception_resnet_v1"
    sample = ", ".join(sorted(keys)[:5])
    raise WeightsError(
        "unrecognised face-recognition weights: expected a MobileFaceNet checkpoint "
        "(keys conv1.conv.*, dw_conv1.*, linear1.*) or a facenet-pytorch InceptionResnetV1 "
        f"state dict (conv2d_1a.*, last_linear.*); found keys like {sample}"
    )


def _mobilefacenet(state: Mapping[str, torch.Tensor]) -> MobileFaceNet:
    net = MobileFaceNet(embedding_dim=state["linear1.conv.weight"].shape[0])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"MobileFaceNet weights do not fit the architecture: {exc}") from exc
    return net.eval()


def mobilefacenet_embed(net: MobileFaceNet, crops: torch.Tensor) -> torch.Tensor:
    """Aligned crops [B, 3, 112, 96] in [-1, 1] -> [B, 256]: image and mirror embeddings."""
    # (x - 127.5) / 128 on 0..255 pixels is x * 127.5 / 128 on [-1, 1].
    x = crops.float() * (127.5 / 128)
    with torch.no_grad():
        return torch.cat([net(x), net(torch.flip(x, dims=[3]))], dim=1)


def load_face_embedder(path: str | Path, device: str | torch.device = "cpu") -> FaceEmbedder:
    """A face embedder for FFHQ-aligned renders [B, 3, H, W] in [-1, 1] from local weights:
    a MobileFaceNet checkpoint or a facenet-pytorch InceptionResnetV1 state dict (told apart by
    their keys; anything else is a ``WeightsError``)."""
    state = _read_state(Path(path))
    kind = face_weights_format(state)
    if kind == "mobilefacenet":
        net = _mobilefacenet(state).to(device)

        def embed(images: torch.Tensor) -> torch.Tensor:
            crops = warp_faces(images.to(device), ffhq_landmarks(images.shape[-1]))
            return mobilefacenet_embed(net, crops)

        return embed
    return _inception_embedder(state, device)


def _inception_embedder(
    state: Mapping[str, torch.Tensor], device: str | torch.device
) -> FaceEmbedder:
    try:
        from facenet_pytorch import InceptionResnetV1
    except ImportError as exc:
        raise WeightsError("facenet-pytorch is not installed") from exc
    net = InceptionResnetV1(pretrained=None, classify=False)
    # The classifier head of a training checkpoint is not part of the embedding.
    features = {k: v for k, v in state.items() if not k.startswith("logits.")}
    try:
        net.load_state_dict(features, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"InceptionResnetV1 weights do not fit: {exc}") from exc
    net = net.eval().to(device)

    def embed(images: torch.Tensor) -> torch.Tensor:
        # Renders are aligned faces already: resize the whole image.
        x = F.interpolate(
            images.float().to(device),
            size=(160, 160),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        with torch.no_grad():
            return net(x)

    return embed


def embed_photo(
    net: MobileFaceNet, photo: object, detector: object | None = None, face_index: int = 0
) -> torch.Tensor:
    """MobileFaceNet embedding [256] of a face in a photo (path, PIL, ...), aligned from
    ``faces.FaceDetector`` landmarks (largest face first)."""
    from ..faces import get_default_detector, load_image, select_face
    from ..imaging import pil_to_tensor

    image = load_image(photo)
    detector = detector or get_default_detector()
    face = select_face(detector.detect(image), face_index)  # type: ignore[attr-defined]
    tensor = pil_to_tensor(image)
    crops = warp_faces(tensor, face.landmarks)
    return mobilefacenet_embed(net, crops)[0]


def load_mobilefacenet(path: str | Path) -> MobileFaceNet:
    """The MobileFaceNet network of a checkpoint (for ``embed_photo``)."""
    state = _read_state(Path(path))
    if face_weights_format(state) != "mobilefacenet":
        raise WeightsError(f"{path} is not a MobileFaceNet checkpoint")
    return _mobilefacenet(state)
