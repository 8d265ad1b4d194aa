"""CSLA portrait editor: the Gradio front end (layout and wiring; the actions are
``csla_app.model.PortraitEditor``, every model and image operation lives in ``csla_core``).

    python app.py                      # real weights (downloaded on first run)
    python app.py --random-weights     # untrained models, no download (development, tests)

Options (flag / environment variable):
  --device DEVICE            CSLA_DEVICE              cpu, cuda, cuda:1 ... (default: cuda if present)
  --checkpoint-dir DIR       CSLA_CHECKPOINT_DIR      where the weight files are looked up
  --random-weights           CSLA_RANDOM_WEIGHTS=1    untrained models; outputs are noise
  --no-download              CSLA_NO_DOWNLOAD=1       never download weights at start-up
  --max-resolution N         CSLA_APP_MAX_RESOLUTION  cap on rendered size (power of two, e.g. 256)
  --keep-allocator           CSLA_KEEP_ALLOCATOR=1    leave glibc's malloc alone (less memory, slower)
  --without-mappers          CSLA_WITHOUT_MAPPERS=1   start as a first run: calibrate mappers while serving
  --calibration-samples N    CSLA_CALIBRATION_SAMPLES first-run calibration bank size (default 1000)
  --precision P              CSLA_PRECISION           auto (bf16 on CPUs with native bf16), fp32, bf16, fp16 (GPU)
  --refine-seconds S         CSLA_REFINE_SECONDS      time budget of "Refine likeness" (default 60 on CPU)
  --share                                             public gradio.live link
The address comes from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (gradio's own variables).
"""

# ZeroGPU needs `spaces` imported before torch initialises CUDA; elsewhere it is a no-op.
import spaces  # noqa: F401

# isort: split
import argparse
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

import csla_core
from csla_app import gradio_fixes
from csla_app.errors import user_error
from csla_app.gradio_fixes import readable_decoding_errors
from csla_app.model import PortraitEditor
from csla_app.settings import EditSettings
from csla_core.errors import WeightsError, finite
from csla_core.runtime import PRECISION_CHOICES
from csla_core.service import SESSION_TTL_S
from csla_core.training.calibrate import CalibrationConfig

__all__ = ["build_demo", "launch_options", "main", "user_error"]

LOG = logging.getLogger("csla.app")

ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLE_PHOTOS = [ASSETS / "astronaut.jpg"]
EXAMPLE_PROMPTS = [
    ["smiling", ""],
    ["grey hair", ""],
    ["wearing glasses", ""],
    ["a face with a beard", "a face"],
    ["angry", "calm"],
]
MAX_UPLOAD = "25mb"  # gradio refuses larger uploads before any decoding
# Every event that runs a model joins this one queue group, so build_demo's concurrency_limit bounds
# the model calls of all events together (gradio's limit is otherwise per event).
MODEL_CONCURRENCY_ID = "csla-models"
MAX_QUEUE_SIZE = 64  # waiting requests beyond this are refused at once with "Queue is full"
# Refinement events only wait on the background worker (one refinement computes at a time): a few
# may wait at once, each showing its place.
REFINE_CONCURRENCY = 4

CSS = """
#csla-notice {border: 2px solid #d97706; background: #fef3c7; color: #78350f;
              border-radius: 8px; padding: 0.6em 1em; font-size: 1.05em;}
#csla-notice.csla-error {border-color: #b91c1c; background: #fee2e2; color: #7f1d1d;}
#csla-notice code {color: inherit;}
"""

MISSING_WEIGHTS_HELP = """
**What to do:** download the weights once with

```bash
python -m csla_core download
```

(or put the files into `checkpoints/`, see `checkpoints/README.md`) and restart the app. To try the
interface without them, start it in random-weights mode (untrained models, outputs are noise):
`python app.py --random-weights` or `CSLA_RANDOM_WEIGHTS=1 python app.py`.
"""


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------


def header(editor: PortraitEditor) -> None:
    gr.Markdown(
        "# CSLA portrait editor\nUpload a portrait, type an edit (“smiling”, “grey hair”), "
        "slide the strength and get several different edits of your own face, pasted back "
        "into your photo."
    )
    if editor.error is not None:
        gr.Markdown(
            f"### ⚠️ The model weights are missing\n```text\n{editor.error}\n```\n"
            f"{MISSING_WEIGHTS_HELP}",
            elem_id="csla-notice",
            elem_classes=["csla-error"],
        )
    elif editor.notice:
        gr.Markdown(f"### ⚠️ {editor.notice}", elem_id="csla-notice")
    # First run: the calibration's progress, refreshed by a timer until the mappers are ready.
    preparing = gr.Markdown(
        editor.preparing, elem_id="csla-preparing", visible=bool(editor.preparing)
    )
    timer = gr.Timer(2.0, active=editor.preparation is not None)
    timer.tick(editor.preparation_tick, outputs=[preparing, timer], api_name=False,
               show_progress="hidden", concurrency_id="calibration")  # fmt: skip


def photo_row() -> dict:
    """The photo, the face choice, and the aligned crop beside its reconstruction."""
    with gr.Row():
        with gr.Column(scale=1):
            photo = readable_decoding_errors(
                gr.Image(
                    label="Your portrait",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "webcam", "clipboard"],
                    height=360,
                    elem_id="photo",
                )
            )
            gr.Examples(
                examples=[[str(p)] for p in EXAMPLE_PHOTOS if p.exists()],
                inputs=[photo],
                label="Example portraits",
                cache_examples=False,
                api_name="load_example_photo",
            )
            face_index = gr.Radio(
                label="Several faces found: which one to edit?",
                choices=[("#0", 0)],
                value=0,
                visible=False,
                elem_id="face-index",
            )
            faces_image = gr.Image(
                label="Detected faces", visible=False, interactive=False, height=240
            )
        with gr.Column(scale=1):
            with gr.Row():
                aligned = gr.Image(
                    label="Aligned crop", interactive=False, height=260, format="png"
                )
                reconstruction = gr.Image(
                    label="The model's reconstruction",
                    interactive=False,
                    height=260,
                    format="png",
                    elem_id="reconstruction",
                )
            gr.Markdown(
                "Strength 0 gives your photo back as it is. Where an edit changes the face, "
                "the new pixels come from the model's reconstruction: **Refine likeness** "
                "tunes the model to this face so that they look like you (about a minute on "
                "a CPU; edits stay possible meanwhile)."
            )
            likeness = gr.Markdown(elem_id="likeness")
            with gr.Row():
                refine_button = gr.Button("Refine likeness", elem_id="refine", scale=2)
                cancel_refine = gr.Button("Cancel", elem_id="cancel-refine", scale=1)
    return dict(
        photo=photo,
        face_index=face_index,
        faces_image=faces_image,
        aligned=aligned,
        reconstruction=reconstruction,
        likeness=likeness,
        refine_button=refine_button,
        cancel_refine=cancel_refine,
    )


def edit_controls() -> dict:
    """Prompts, strength, samples, spread, seed, how to show the results, the Edit button."""
    with gr.Row():
        prompt = gr.Textbox(
            "", label="Edit prompt", placeholder="smiling", scale=3, elem_id="prompt"
        )
        source_prompt = gr.Textbox(
            "", label="Neutral / source prompt (optional)", placeholder="a face", scale=2
        )
    gr.Examples(
        examples=EXAMPLE_PROMPTS,
        inputs=[prompt, source_prompt],
        label="Example prompts",
        api_name="load_example_prompt",
    )
    with gr.Row():
        strength = gr.Slider(
            -3.0,
            3.0,
            value=1.0,
            step=0.1,
            label="Strength",
            info="0 = unchanged, negative = the opposite edit",
            elem_id="strength",
            scale=3,
        )
        auto_strength = gr.Checkbox(
            False,
            label="Auto strength",
            info="find a clearly visible strength for this face and prompt (needs "
            "trained CSLA mappers); moving the slider switches it off",
            elem_id="auto-strength",
            scale=1,
        )
    with gr.Row():
        samples = gr.Slider(1, 8, value=4, step=1, label="Samples", elem_id="samples")
        diversity = gr.Slider(
            0.0, 1.0, value=0.5, step=0.05, label="Spread", info="how different the samples are"
        )
        seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
    with gr.Row():
        paste_mode = gr.Radio(
            [("Pasted into my photo", "photo"), ("Aligned crop", "crop")],
            value="photo",
            label="Show results",
            scale=2,
        )
        detail = gr.Radio(
            [("Keep my photo's detail", "keep"), ("The model's face only", "none")],
            value="keep",
            label="Photo detail",
            info="keep: your own pixels wherever the edit leaves the face alone",
            elem_id="detail",
            scale=2,
        )
        edit_button = gr.Button("Edit", variant="primary", scale=1, elem_id="edit")
    return dict(
        prompt=prompt,
        source_prompt=source_prompt,
        strength=strength,
        auto_strength=auto_strength,
        samples=samples,
        diversity=diversity,
        seed=seed,
        paste_mode=paste_mode,
        detail=detail,
        edit_button=edit_button,
    )


def results_row() -> dict:
    """The status line, the results (output only) and the before/after comparison."""
    status = gr.Markdown(elem_id="status")
    with gr.Row(equal_height=False):
        gallery = gr.Gallery(
            label="Results (click one to compare; download at full resolution)",
            columns=2,
            height=560,
            format="png",
            object_fit="contain",
            buttons=["download", "download_all", "fullscreen"],
            interactive=False,  # an input of the comparison, which would make it an upload zone
            elem_id="results",
            scale=3,
        )
        slider = gr.ImageSlider(
            label="Before / after", format="png", elem_id="compare", scale=2, max_height=560
        )
    api_edit_trigger = gr.Button(visible=False)  # the /edit endpoint's event
    api_refine = gr.Checkbox(False, visible=False)  # /edit's optional "refine" parameter
    return dict(
        status=status,
        gallery=gallery,
        slider=slider,
        api_edit_trigger=api_edit_trigger,
        api_refine=api_refine,
    )


def sweep_tab(default_frames: int) -> dict:
    gr.Markdown(
        "An animation of one sample going from −strength to +strength and back, using the "
        "photo, face and prompts of the first tab."
    )
    with gr.Row():
        sweep_strength = gr.Slider(0.5, 3.0, value=1.5, step=0.1, label="Up to strength")
        sweep_frames = gr.Slider(
            3,
            15,
            value=default_frames,
            step=1,
            label="Frames (few on CPU: each one is a render)",
        )
        sweep_button = gr.Button("Make the animation", variant="primary")
    sweep_image = gr.Image(
        label="Strength sweep (GIF)", interactive=False, type="filepath", height=520
    )
    return dict(
        sweep_strength=sweep_strength,
        sweep_frames=sweep_frames,
        sweep_button=sweep_button,
        sweep_image=sweep_image,
    )


def text_to_image_tab() -> dict:
    with gr.Row():
        t2i_prompt = gr.Textbox(
            "", label="Describe a face", placeholder="a smiling old man", scale=3
        )
        t2i_samples = gr.Slider(1, 8, value=4, step=1, label="Samples")
        t2i_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        t2i_button = gr.Button("Generate", variant="primary")
    t2i_gallery = gr.Gallery(
        label="Generated faces",
        columns=4,
        height="auto",
        format="png",
        buttons=["download", "fullscreen"],
    )
    return dict(
        t2i_prompt=t2i_prompt,
        t2i_samples=t2i_samples,
        t2i_seed=t2i_seed,
        t2i_button=t2i_button,
        t2i_gallery=t2i_gallery,
    )


# ---------------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------------


def wire(editor: PortraitEditor, ui: SimpleNamespace) -> None:
    """Every event: which components feed which action of ``editor``, and where its results go.
    Every event that runs a model is in the MODEL_CONCURRENCY_ID queue group. The API
    descriptions are given here: gradio would otherwise show the methods' docstrings, which
    describe UI actions."""
    models = {"concurrency_id": MODEL_CONCURRENCY_ID}
    analysis_outputs = [
        ui.face_index,
        ui.faces_image,
        ui.aligned,
        ui.reconstruction,
        ui.likeness,
        ui.cache,
    ]
    ui.photo.change(
        editor.new_photo,
        [ui.photo, ui.cache],
        analysis_outputs,
        api_name="invert",
        api_description=False,
        **models,
    )
    ui.face_index.input(
        editor.select_face,
        [ui.photo, ui.face_index, ui.cache],
        analysis_outputs,
        api_name="select_face",
        api_description="New photo or another face: detect, align, invert, show the "
        "reconstruction.",
        **models,
    )

    # Refinement runs in the background and yields to every model call: its event waits on it
    # outside the model queue, so other requests are served meanwhile.
    refining = ui.refine_button.click(
        editor.refine,
        [ui.photo, ui.face_index, ui.cache],
        [ui.reconstruction, ui.likeness, ui.cache],
        api_name="refine",
        api_description="Refine likeness: tune the model to the chosen face (pivotal tuning); "
        "every later edit of it in this session uses the result.",
        concurrency_id="refine",
        concurrency_limit=REFINE_CONCURRENCY,
        show_progress_on=[ui.reconstruction],
    )
    ui.cancel_refine.click(None, None, None, cancels=[refining], api_name=False)

    # The edit settings, passed by name (their names are the API's parameter names), then the
    # session cache: the same inputs for the button, the slider and its release.
    settings = EditSettings.inputs(
        photo=ui.photo,
        face_index=ui.face_index,
        prompt=ui.prompt,
        source_prompt=ui.source_prompt,
        strength=ui.strength,
        auto=ui.auto_strength,
        samples=ui.samples,
        diversity=ui.diversity,
        seed=ui.seed,
        paste_mode=ui.paste_mode,
        detail=ui.detail,
    )
    edit_event = {
        "inputs_kwargs": {**settings, "cache": ui.cache},
        "outputs": [ui.gallery, ui.slider, ui.status, ui.cache, ui.strength, ui.auto_strength],
        **models,
    }
    gr.on(
        [ui.edit_button.click, ui.prompt.submit],
        editor.edit,
        api_name="edit_photo",
        api_description='Edit button / Enter: the edits, and with "auto strength" the slider '
        "moved to the strength found.",
        show_progress_on=[ui.gallery],  # not over the strength controls it may update
        **edit_event,
    )
    # The slider: previews while it moves, the full size on release; one queue, so a preview
    # never lands after the release's render.
    ui.strength.input(
        editor.preview,
        api_name="edit_preview",
        api_visibility="undocumented",
        trigger_mode="always_last",
        show_progress="hidden",
        **edit_event,
    )
    ui.strength.release(
        editor.release,
        api_name="edit_on_release",
        api_visibility="undocumented",
        trigger_mode="always_last",
        show_progress_on=[ui.gallery],
        **edit_event,
    )
    ui.api_edit_trigger.click(
        editor.edit_api,
        [ui.photo, ui.prompt, ui.strength, ui.seed, ui.samples, ui.detail, ui.api_refine, ui.cache],
        [ui.gallery, ui.cache],
        api_name="edit",
        api_description="Edit the largest face of a photo: (image, prompt, strength, seed, "
        "samples[, detail, refine]) -> the edited photos, pasted back at full resolution. "
        'detail: "keep" (default) or "none"; refine: refine likeness first (default false; '
        "up to a minute on a CPU).",
        **models,
    )
    ui.gallery.select(
        editor.compare,
        [ui.gallery, ui.cache],
        [ui.slider],
        api_name="compare",
        api_visibility="undocumented",
        queue=False,
    )
    ui.sweep_button.click(
        editor.sweep,
        outputs=[ui.sweep_image, ui.cache],
        # In the /sweep API's parameter order.
        inputs_kwargs={
            "photo": ui.photo,
            "face_index": ui.face_index,
            "prompt": ui.prompt,
            "source_prompt": ui.source_prompt,
            "max_strength": ui.sweep_strength,
            "frames": ui.sweep_frames,
            "diversity": ui.diversity,
            "seed": ui.seed,
            "paste_mode": ui.paste_mode,
            "detail": ui.detail,
            "cache": ui.cache,
        },
        api_name="sweep",
        **models,
    )
    gr.on(
        [ui.t2i_button.click, ui.t2i_prompt.submit],
        editor.generate,
        [ui.t2i_prompt, ui.t2i_samples, ui.t2i_seed],
        [ui.t2i_gallery],
        api_name="generate",
        api_description=False,
        **models,
    )


def build_demo(
    pipe_or_error: csla_core.CSLAPipeline | BaseException,
    *,
    max_resolution: int | None = None,
    concurrency_limit: int = 1,
    sweep_dir: str | os.PathLike | None = None,
    prepare_mappers: bool = True,
    calibration: CalibrationConfig | None = None,
    refine_seconds: float | None = None,
    allow_download: bool = False,
) -> gr.Blocks:
    """The whole app around a loaded pipeline, or around the error that prevented loading it.

    ``max_resolution`` caps the rendered size (a power of two; None = the generator's 1024);
    ``concurrency_limit`` is how many model calls run at once (all events together).
    Without mappers for the loaded models, ``prepare_mappers`` calibrates them in the background
    (``calibration``: its settings) while edits use the optimisation fallback.
    ``refine_seconds``: "Refine likeness"'s time budget (default: 60 s on a CPU);
    ``allow_download``: it may fetch LPIPS's AlexNet (else its MS-SSIM fallback).
    """
    gradio_fixes.install()
    editor = PortraitEditor(
        pipe_or_error,
        max_resolution=max_resolution,
        sweep_dir=sweep_dir,
        prepare_mappers=prepare_mappers,
        calibration=calibration,
        refine_seconds=refine_seconds,
        allow_download=allow_download,
    )
    with gr.Blocks(title="CSLA portrait editor", delete_cache=(1800, 3600)) as demo:
        # Per-session cache; dropped SESSION_TTL_S after its last update (or when the tab closes).
        cache = gr.State(None, time_to_live=SESSION_TTL_S)
        header(editor)
        with gr.Tab("Edit a portrait", id="edit"):
            first = {**photo_row(), **edit_controls(), **results_row()}
        with gr.Tab("Strength sweep", id="sweep"):
            second = sweep_tab(editor.default_frames)
        with gr.Tab("Text to image", id="generate"):
            third = text_to_image_tab()
        wire(editor, SimpleNamespace(cache=cache, **first, **second, **third))
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=MAX_QUEUE_SIZE)
    return demo


def launch_options() -> dict:
    """Keyword arguments of ``demo.launch`` that belong to the app (gradio 6: css/theme here)."""
    return {"css": CSS, "max_file_size": MAX_UPLOAD, "show_error": True}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def _env_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    return finite(value, name) if value else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CSLA portrait editor (Gradio app).")
    parser.add_argument(
        "--device",
        default=os.environ.get("CSLA_DEVICE") or None,
        help="cpu, cuda, cuda:1 ... (default: cuda when available)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("CSLA_CHECKPOINT_DIR") or None,
        help="folder with the weight files (default: checkpoints/)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        default=_env_flag("CSLA_RANDOM_WEIGHTS"),
        help="untrained models: no download, outputs are noise (env CSLA_RANDOM_WEIGHTS=1)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        default=_env_flag("CSLA_NO_DOWNLOAD"),
        help="never download weights at start-up (env CSLA_NO_DOWNLOAD=1)",
    )
    parser.add_argument(
        "--max-resolution",
        type=int,
        default=_env_int("CSLA_APP_MAX_RESOLUTION"),
        help="cap on the rendered size, a power of two such as 256 (env "
        "CSLA_APP_MAX_RESOLUTION; default: 1024)",
    )
    parser.add_argument(
        "--keep-allocator",
        action="store_true",
        default=_env_flag("CSLA_KEEP_ALLOCATOR"),
        help="leave glibc's malloc settings alone: about 0.2 GB less resident memory, 1024 px "
        "renders about 0.2 s slower on CPU (env CSLA_KEEP_ALLOCATOR=1; csla_core/runtime.py)",
    )
    parser.add_argument(
        "--without-mappers",
        action="store_true",
        default=_env_flag("CSLA_WITHOUT_MAPPERS"),
        help="load no mappers, as on a first run: the app calibrates them while it serves "
        "(with --random-weights: try the first-run flow; env CSLA_WITHOUT_MAPPERS=1)",
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=_env_int("CSLA_CALIBRATION_SAMPLES") or CalibrationConfig.n_samples,
        help="first-run calibration bank size (env CSLA_CALIBRATION_SAMPLES; default "
        "%(default)s, about 10 min on 2 CPU cores)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="auto (default): bf16 on CPUs with native bf16 where it measures faster, else "
        "fp32-compact (fp32 maths, the encoder's style blocks and CLIP stored in bf16: 0.7 GB "
        "less); fp32: exact; fp16 and bf16 on a GPU are asked for by name (env CSLA_PRECISION)",
    )
    parser.add_argument(
        "--refine-seconds",
        type=float,
        default=_env_float("CSLA_REFINE_SECONDS"),
        help="time budget of “Refine likeness” (env CSLA_REFINE_SECONDS; default: 60 s on a "
        "CPU, PTI's 350 steps on a GPU)",
    )
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> csla_core.CSLAPipeline | BaseException:
    """The pipeline, or the error to show on the page (the app starts either way)."""
    try:
        return csla_core.load_pipeline(
            device=args.device,
            random_weights=args.random_weights,
            checkpoint_dir=args.checkpoint_dir,
            allow_download=not args.no_download,
            tune_allocator=not args.keep_allocator,
            with_mappers=not args.without_mappers,
            precision=args.precision,
        )
    except WeightsError as exc:
        LOG.error("Model weights are missing: %s", exc)
        return exc
    except Exception as exc:  # shown on the page; the full trace goes to the log
        LOG.exception("Could not load the models")
        return WeightsError(f"The models could not be loaded ({type(exc).__name__}: {exc}).")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    LOG.setLevel(logging.INFO)
    logging.getLogger("csla_core").setLevel(logging.INFO)  # calibration, mappers, refinement
    args = parse_args(argv)
    pipe_or_error = load(args)
    if isinstance(pipe_or_error, csla_core.CSLAPipeline):
        pipe = pipe_or_error
        LOG.info("precision: %s (%s)", pipe.precision, pipe.precision_reason)
        LOG.info("mappers: %s", pipe.sources.get("mappers", "none yet: the first run makes them"))
        if pipe.notice:
            LOG.warning(pipe.notice)
    calibration = CalibrationConfig(n_samples=args.calibration_samples, chunk=4)
    if args.refine_seconds is not None and args.refine_seconds <= 0:
        raise SystemExit("--refine-seconds must be a positive number of seconds")
    demo = build_demo(
        pipe_or_error,
        max_resolution=args.max_resolution,
        calibration=calibration,
        refine_seconds=args.refine_seconds,
        allow_download=not args.no_download,
    )
    demo.launch(share=args.share, **launch_options())


if __name__ == "__main__":
    main()
