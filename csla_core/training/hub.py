"""Publishing trained mappers: a model card and an upload to a Hugging Face model repo."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import WeightsError


def model_card(output_dir: str | Path, repo_id: str) -> str:
    """A README model card for the trained mappers (config and measured stats)."""
    output_dir = Path(output_dir)
    stats_path, cfg_path = output_dir / "train_stats.json", output_dir / "train_config.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    lines = [
        "---",
        "library_name: pytorch",
        "tags: [stylegan2, clip, image-editing, csla]",
        "---",
        "",
        f"# {repo_id}: CSLA mappers",
        "",
        "CLIP-residual -> StyleGAN2 W+/S residual mappers trained data-free, an implementation of",
        "*Bridging CLIP and StyleGAN through Latent Alignment for Image Editing*",
        "(arXiv 2210.04506). Weights: `mappers.safetensors` (config in the metadata and in",
        "`mappers.json`). Load with `csla_core.weights.load_mappers(path)`.",
        "",
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
