"""CSLA portrait editor: the Gradio front end.

This file builds the user interface only: its handlers call the editing service
(``csla_core.service``) and turn its errors into messages; every model and image operation lives
in ``csla_core``.

    python app.py                      # real weights (downloaded on first run)
    python app.py --random-weights     # untrained models, no download (development, tests)

Options (flag / environment variable):
  --device DEVICE            CSLA_DEVICE              cpu, cuda, cuda:1 ... (default: cuda if present)
  --checkpoint-dir DIR       CSLA_CHECKPOINT_DIR      where the weight files are looked up
  --random-weights           CSLA_RANDOM_WEIGHTS=1    untrained models; outputs are noise
  --no-download              CSLA_NO_DOWNLOAD=1       never download weights at start-up
  --max-resolution N         CSLA_APP_MAX_RESOLUTION  cap on rendered size (power of two, e.g. 256)
  --keep-allocator           CSLA_KEEP_ALLOCATOR=1    leave glibc's malloc alone (less memory, slower)
  --share                                             public gradio.live link
The address comes from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (gradio's own variables).
"""

# ZeroGPU needs `spaces` imported before torch initialises CUDA; elsewhere it is a no-op.
import spaces

# isort: split
import argparse
import functools
import inspect
import logging
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import PIL.Image
from gradio import processing_utils

import csla_core
from csla_core.errors import CSLAError, InputImageError, NoFaceError, PromptError, WeightsError
from csla_core.service import (
    AUTO_STRENGTH,
    SESSION_TTL_S,
    EditingService,
    InvalidSettingError,
    NoPhotoError,
    compare_pair,
    free_cached_memory,
    is_out_of_memory,
    session_cache,
)

LOG = logging.getLogger("csla.app")
PROGRESS = gr.Progress()  # the progress-tracker default of the handlers (reports per request)

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
GPU_DURATION_S = 60  # ZeroGPU time slot per model call
EDIT_GPU_DURATION_S = 120  # an edit may fall back to the optimisation baseline (no mappers)
# Every event that runs a model joins this one queue group, so build_demo's concurrency_limit bounds
# the model calls of all events together (gradio's limit is otherwise per event).
MODEL_CONCURRENCY_ID = "csla-models"
MAX_QUEUE_SIZE = 64  # waiting requests beyond this are refused at once with "Queue is full"

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
# Errors -> messages
# ---------------------------------------------------------------------------------------------


def user_error(exc: BaseException) -> gr.Error:
    """Any exception -> a gr.Error with a message a user can act on."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, CSLAError):
        return gr.Error(str(exc), title=_error_title(exc), print_exception=False)
    if is_out_of_memory(exc):
        free_cached_memory()
        return gr.Error(
            "Out of memory while processing this request. Try fewer samples, a smaller photo, or "
            "try again in a moment when fewer people are using the app.",
            title="Out of memory",
            print_exception=False,
        )
    LOG.error("Unexpected error:\n%s", "".join(traceback.format_exception(exc)))
    return gr.Error(
        f"Something went wrong ({type(exc).__name__}: {exc}). Your photo is kept; please try "
        "again, or with another photo.",
        title="Unexpected error",
        print_exception=False,
    )


def _error_title(exc: CSLAError) -> str:
    for kind, title in (
        (NoFaceError, "No face found"),
        (NoPhotoError, "No photo"),
        (InputImageError, "Cannot use this image"),
        (PromptError, "Prompt problem"),
        (InvalidSettingError, "Invalid setting"),
        (WeightsError, "Model weights missing"),
    ):
        if isinstance(exc, kind):
            return title
    return "Error"


def friendly(fn: Callable) -> Callable:
    """Turn every exception raised by an event handler into a readable gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise user_error(exc) from exc

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise user_error(exc) from exc

    return wrapper


# ---------------------------------------------------------------------------------------------
# ZeroGPU: each model call of the editing service gets a GPU slot (a no-op anywhere else)
# ---------------------------------------------------------------------------------------------


def zero_gpu(name: str, fn: Callable) -> Callable:
    """``spaces.GPU`` around one model call; an edit may fall back to the (slower) baseline."""
    return spaces.GPU(duration=EDIT_GPU_DURATION_S if name == "edit" else GPU_DURATION_S)(fn)


# ---------------------------------------------------------------------------------------------
# Result images: written atomically into gradio's cache
# ---------------------------------------------------------------------------------------------


def save_pil_to_cache_atomically(
    img: PIL.Image.Image, cache_dir: str, name: str = "image", format: str = "webp"
) -> str:
    """gradio's ``processing_utils.save_pil_to_cache``, but written under a temporary name and
    renamed into place.

    Why: gradio 6.31 names a result image by its content (``<sha256>/image.png``) and rewrites
    that file in place (truncate, write) whenever the same image is produced again. Users with
    identical results (the example photo, same prompt and seed) share the file, and one can be
    downloading it while another request truncates it: a cut-off image ("Too little data for
    declared Content-Length", seen in tests/test_load.py). A complete file renamed into place
    gives every reader a whole file (a new inode also restarts its age for ``delete_cache``).
    gradio already does this for copied files (``save_file_to_cache``). Handing gradio our own
    uniquely named files instead would mean a second copy of every result, our own clean-up, and
    changes to every image-returning handler; this one function is the smaller change.
    """
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(staging, 0o644)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(target)


# Components look the function up on the module at each call (gallery, image, image slider).
processing_utils.save_pil_to_cache = save_pil_to_cache_atomically


# ---------------------------------------------------------------------------------------------
# Photo input: decoding problems become readable errors
# ---------------------------------------------------------------------------------------------


def readable_decoding_errors(component: gr.Image) -> gr.Image:
    """Make ``component`` report an undecodable upload as a message, not a stack trace.

    gr.Image opens every upload with Pillow before any handler runs. (Wrapping the instance's
    method, not subclassing: gradio writes a .pyi stub next to any module defining a component.)
    """
    preprocess = component.preprocess

    @functools.wraps(preprocess)
    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except PIL.Image.DecompressionBombError as exc:
            name = getattr(payload, "orig_name", None) or "The uploaded image"
            raise gr.Error(
                f"{name} is too large: it has more than {2 * PIL.Image.MAX_IMAGE_PIXELS:,} "
                "pixels. Resize the photo and try again.",
                title="Cannot use this image",
                print_exception=False,
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            name = getattr(payload, "orig_name", None) or "The uploaded file"
            raise gr.Error(
                f"{name} is not an image that can be read ({type(exc).__name__}). Upload a "
                "JPEG, PNG, WebP, BMP, TIFF or GIF photo.",
                title="Cannot use this image",
                print_exception=False,
            ) from exc

    component.preprocess = checked
    return component


# ---------------------------------------------------------------------------------------------
# The UI
# ---------------------------------------------------------------------------------------------


def build_demo(
    pipe_or_error: csla_core.CSLAPipeline | BaseException,
    *,
    max_resolution: int | None = None,
    concurrency_limit: int = 1,
    sweep_dir: str | os.PathLike | None = None,
) -> gr.Blocks:
    """The whole app around a loaded pipeline, or around the error that prevented loading it.

    ``max_resolution`` caps the rendered size (a power of two; None = the generator's 1024);
    ``concurrency_limit`` is how many model calls run at once (all events together).
    """
    service = EditingService(
        pipe_or_error, max_resolution=max_resolution, sweep_dir=sweep_dir, wrap_model_call=zero_gpu
    )

    # ---- event handlers: the editing service, with errors as messages ------------------------
    @friendly
    def analyse(photo, face_index, cache, progress=PROGRESS, reset=False):
        """New photo or another face: detect, align, invert, show the reconstruction."""
        cache = session_cache(cache)
        hidden = gr.update(visible=False)
        if not photo:
            yield gr.update(choices=[("#0", 0)], value=0, visible=False), hidden, None, None, cache
            return
        service.require()
        # Clear the previous photo's outputs at once (a failure below must not leave them).
        if reset:
            yield gr.update(choices=[("#0", 0)], value=0, visible=False), hidden, None, None, cache
        else:
            yield gr.skip(), gr.skip(), None, None, cache
        for step in service.analysis_steps(cache, photo, face_index, progress):
            radio = gr.update(choices=step.choices, value=step.chosen, visible=step.several)
            faces = gr.update(value=step.annotated, visible=step.several)
            yield radio, faces, step.crop, step.reconstruction, cache

    def new_photo(photo, cache, progress=PROGRESS):
        yield from analyse(photo, 0, cache, progress=progress, reset=True)

    @friendly
    def edit_ui(
        photo,
        face_index,
        prompt,
        source_prompt,
        strength,
        auto,
        samples,
        diversity,
        seed,
        paste_mode,
        cache,
        progress=PROGRESS,
        resolutions=None,
        finished=True,
    ):
        """Edit button / Enter: the edits, and with "auto strength" the slider moved to the
        strength found."""
        cache = session_cache(cache)
        for items, pair, status, used in service.edit_steps(
            cache,
            photo,
            face_index,
            prompt,
            source_prompt,
            AUTO_STRENGTH if auto else strength,
            samples,
            diversity,
            seed,
            paste_mode == "photo",
            progress,
            gr.Warning,
            resolutions,
            finished,
        ):
            yield items, pair, status, cache, used if auto else gr.skip(), gr.skip()

    def slider_handler(moving: bool) -> Callable:
        """The strength slider's handler. While it moves: preview-size renders, only of a face
        this session has already inverted. On release: the full size (the drag showed the
        preview). Quiet when there is nothing to edit yet."""

        def handler(
            photo,
            face_index,
            prompt,
            source_prompt,
            strength,
            _auto,
            samples,
            diversity,
            seed,
            paste_mode,
            cache,
            progress=PROGRESS,
        ):
            cache = session_cache(cache)
            ready = bool(photo) and bool((prompt or "").strip()) and service.pipe is not None
            if not ready or (moving and not service.has_inversion(cache, photo, face_index)):
                yield gr.skip(), gr.skip(), gr.skip(), cache, gr.skip(), gr.skip()
                return
            # The user sets the strength by hand: "auto strength" is switched off.
            for *outputs, _ in edit_ui(
                photo,
                face_index,
                prompt,
                source_prompt,
                strength,
                False,
                samples,
                diversity,
                seed,
                paste_mode,
                cache,
                progress=progress,
                resolutions=service.resolutions[:1] if moving else service.resolutions[-1:],
                finished=not moving,
            ):
                yield *outputs, False

        return handler

    @friendly
    def edit_api(photo, prompt, strength, seed, samples, cache, progress=PROGRESS):
        """One call: photo + prompt -> edited photos (largest face, pasted back, full size)."""
        cache = session_cache(cache)
        for items, *_ in service.edit_steps(
            cache, photo, 0, prompt, None, strength, samples, 0.5, seed, True, progress, gr.Warning
        ):
            yield items, cache

    def compare(gallery, cache, evt: gr.SelectData):
        pair = compare_pair(gallery, cache, evt.index)
        return gr.skip() if pair is None else pair

    @friendly
    def sweep(
        photo,
        face_index,
        prompt,
        source_prompt,
        max_strength,
        frames,
        diversity,
        seed,
        paste_mode,
        cache,
        progress=PROGRESS,
    ):
        """An animation of sample 1 from -max_strength to +max_strength and back."""
        service.require()
        cache = session_cache(cache)
        name = service.sweep(
            cache,
            photo,
            face_index,
            prompt,
            source_prompt,
            max_strength,
            frames,
            diversity,
            seed,
            paste_mode == "photo",
            progress,
            gr.Warning,
        )
        return name, cache

    @friendly
    def text_to_image(prompt, samples, seed, progress=PROGRESS):
        yield from service.generate_steps(prompt, samples, seed, progress, gr.Warning)

    # ---- layout ---------------------------------------------------------------------------
    with gr.Blocks(title="CSLA portrait editor", delete_cache=(1800, 3600)) as demo:
        # Per-session cache; dropped SESSION_TTL_S after its last update (or when the tab closes).
        cache = gr.State(None, time_to_live=SESSION_TTL_S)
        gr.Markdown(
            "# CSLA portrait editor\nUpload a portrait, type an edit (“smiling”, “grey hair”), "
            "slide the strength and get several different edits of your own face, pasted back "
            "into your photo."
        )
        if service.pipe is None:
            gr.Markdown(
                f"### ⚠️ The model weights are missing\n```text\n{service.error}\n```\n"
                f"{MISSING_WEIGHTS_HELP}",
                elem_id="csla-notice",
                elem_classes=["csla-error"],
            )
        elif service.notice:
            gr.Markdown(f"### ⚠️ {service.notice}", elem_id="csla-notice")

        with gr.Tab("Edit a portrait", id="edit"):
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
                            label="Reconstruction (how the model sees the face)",
                            interactive=False,
                            height=260,
                            format="png",
                        )
                    gr.Markdown(
                        "The closer the reconstruction is to the crop, the more the edits will "
                        "look like you."
                    )
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
                    0.0,
                    1.0,
                    value=0.5,
                    step=0.05,
                    label="Spread",
                    info="how different the samples are",
                )
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
            with gr.Row():
                paste_mode = gr.Radio(
                    [("Pasted into my photo", "photo"), ("Aligned crop", "crop")],
                    value="photo",
                    label="Show results",
                    scale=2,
                )
                edit_button = gr.Button("Edit", variant="primary", scale=1, elem_id="edit")
            status = gr.Markdown(elem_id="status")
            with gr.Row(equal_height=False):
                gallery = gr.Gallery(
                    label="Results (click one to compare; download at full resolution)",
                    columns=2,
                    height=560,
                    format="png",
                    object_fit="contain",
                    buttons=["download", "download_all", "fullscreen"],
                    elem_id="results",
                    scale=3,
                )
                slider = gr.ImageSlider(
                    label="Before / after", format="png", elem_id="compare", scale=2, max_height=560
                )
            api_edit_trigger = gr.Button(visible=False)

        with gr.Tab("Strength sweep", id="sweep"):
            gr.Markdown(
                "An animation of one sample going from −strength to +strength and back, using the "
                "photo, face and prompts of the first tab."
            )
            with gr.Row():
                sweep_strength = gr.Slider(0.5, 3.0, value=1.5, step=0.1, label="Up to strength")
                sweep_frames = gr.Slider(
                    3,
                    15,
                    value=service.default_frames,
                    step=1,
                    label="Frames (few on CPU: each one is a render)",
                )
                sweep_button = gr.Button("Make the animation", variant="primary")
            sweep_image = gr.Image(
                label="Strength sweep (GIF)", interactive=False, type="filepath", height=520
            )

        with gr.Tab("Text to image", id="generate"):
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

        # ---- events ---------------------------------------------------------------------
        analysis_outputs = [face_index, faces_image, aligned, reconstruction, cache]
        photo.change(
            new_photo,
            [photo, cache],
            analysis_outputs,
            api_name="invert",
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
        face_index.input(
            analyse,
            [photo, face_index, cache],
            analysis_outputs,
            api_name="select_face",
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
        edit_inputs = [
            photo,
            face_index,
            prompt,
            source_prompt,
            strength,
            auto_strength,
            samples,
            diversity,
            seed,
            paste_mode,
            cache,
        ]
        edit_outputs = [gallery, slider, status, cache, strength, auto_strength]
        gr.on(
            [edit_button.click, prompt.submit],
            edit_ui,
            edit_inputs,
            edit_outputs,
            api_name="edit_photo",
            show_progress_on=[gallery],  # not over the strength controls it may update
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
        strength.input(
            slider_handler(moving=True),
            edit_inputs,
            edit_outputs,
            api_name="edit_preview",
            api_visibility="undocumented",
            trigger_mode="always_last",
            show_progress="hidden",
            concurrency_id=MODEL_CONCURRENCY_ID,  # one queue: a preview never lands after release
        )
        strength.release(
            slider_handler(moving=False),
            edit_inputs,
            edit_outputs,
            api_name="edit_on_release",
            api_visibility="undocumented",
            trigger_mode="always_last",
            show_progress_on=[gallery],
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
        api_edit_trigger.click(
            edit_api,
            [photo, prompt, strength, seed, samples, cache],
            [gallery, cache],
            api_name="edit",
            api_description="Edit the largest face of a photo: (image, prompt, strength, seed, "
            "samples) -> the edited photos, pasted back at full resolution.",
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
        gallery.select(
            compare,
            [gallery, cache],
            [slider],
            api_name="compare",
            api_visibility="undocumented",
            queue=False,
        )
        sweep_button.click(
            sweep,
            [
                photo,
                face_index,
                prompt,
                source_prompt,
                sweep_strength,
                sweep_frames,
                diversity,
                seed,
                paste_mode,
                cache,
            ],
            [sweep_image, cache],
            api_name="sweep",
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
        gr.on(
            [t2i_button.click, t2i_prompt.submit],
            text_to_image,
            [t2i_prompt, t2i_samples, t2i_seed],
            [t2i_gallery],
            api_name="generate",
            concurrency_id=MODEL_CONCURRENCY_ID,
        )

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
    args = parse_args(argv)
    pipe_or_error = load(args)
    if isinstance(pipe_or_error, csla_core.CSLAPipeline) and pipe_or_error.notice:
        LOG.warning(pipe_or_error.notice)
    demo = build_demo(pipe_or_error, max_resolution=args.max_resolution)
    demo.launch(share=args.share, **launch_options())


if __name__ == "__main__":
    main()
