"""Publishing trained mappers: a model card and an upload to a Hugging Face model repo."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import WeightsError


def _card_header(repo_id: str, how: str, weights_file: str) -> list[str]:
    return [
        "---",
        "library_name: pytorch",
        "tags: [stylegan2, clip, image-editing, csla]",
        "---",
        "",
        f"# {repo_id}: CSLA mappers",
        "",
        f"CLIP-residual -> StyleGAN2 W+/S residual mappers {how}, an implementation of",
        "*Bridging CLIP and StyleGAN through Latent Alignment for Image Editing*",
        f"(arXiv 2210.04506). Weights: `{weights_file}` (config in the safetensors metadata).",
        "Load with `csla_core.weights.load_mappers(path)`, or let the app find them:",
        f"`CSLA_MAPPERS_REPO={repo_id}`.",
        "",
    ]


def model_card(output_dir: str | Path, repo_id: str) -> str:
    """A README model card for the trained mappers (config and measured stats)."""
    output_dir = Path(output_dir)
    stats_path, cfg_path = output_dir / "train_stats.json", output_dir / "train_config.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    lines = [
        *_card_header(repo_id, "trained data-free", "mappers.safetensors"),
        "## Training",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "",
        "## Measured",
        "```json",
        json.dumps(stats, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def push_to_hub(
    output_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool = True
) -> str:
    """Upload the mapper, its config and a generated model card to a Hugging Face model repo."""
    from huggingface_hub import HfApi  # imported here: only this optional step needs it

    output_dir = Path(output_dir)
    if not (output_dir / "mappers.safetensors").is_file():
        raise WeightsError(f"nothing to upload: {output_dir / 'mappers.safetensors'} is missing")
    (output_dir / "README.md").write_text(model_card(output_dir, repo_id))
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        repo_type="model",
        allow_patterns=[
            "mappers.safetensors",
            "mappers.json",
            "README.md",
            "train_config.json",
            "train_stats.json",
        ],
        commit_message="Upload CSLA mappers",
    )
    return f"https://huggingface.co/{repo_id}"


def upload_calibrated_mappers(
    path: str | Path, repo_id: str, fingerprints: dict[str, str], *, token: str | None = None
) -> str:
    """Upload mappers calibrated for the models with ``fingerprints`` to a model repo (made
    private if missing), named for those models, with a model card, in one commit: the next
    start of the app finds them there (``loading.find_mappers``)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from ..weights import mappers_filename

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"nothing to upload: {path} is missing")
    name = mappers_filename(fingerprints)
    card = _card_header(repo_id, "calibrated data-free on the app's first run", name) + [
        "## The models they belong to",
        "",
        *(f"- {role}: sha256 `{digest}`" for role, digest in sorted(fingerprints.items())),
        "",
        "Mappers made for other models are refused when loaded.",
        "",
    ]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)
    api.create_commit(
        repo_id,
        [
            CommitOperationAdd(name, str(path)),
            CommitOperationAdd("README.md", "\n".join(card).encode()),
        ],
        commit_message="CSLA mappers calibrated by the app",
    )
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"
