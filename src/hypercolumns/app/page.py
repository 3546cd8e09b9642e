"""The explorer's page: a Gradio Blocks layout wired to :mod:`hypercolumns.app.handlers`.

Gradio is imported here only, and only when a page is built, so the package works without
the ``app`` extra. The page:

- ``hc-image``: the image (click a pixel); an upload button and the images given on the
  command line beside it; ``hc-status``: a line describing the last click (or what went wrong);
- ``hc-rf``: the clicked pixel's unit in each chosen layer, its exact box on the image (one
  colour per layer); ``hc-similarity``: the cosine similarity of the clicked pixel's
  hypercolumn to every pixel; ``hc-target``: the same over a second image (uploaded or
  picked), its best match marked;
- tabs: ``hc-erf`` (the unit's effective receptive field on this image), the hypercolumn
  profile, feature maps and the mean hypercolumn activation, the PCA image and k-means
  clusters, scribble segmentation (paint two or more classes, fit a linear probe, download
  it), ``hc-layers`` (the layer table, where the hypercolumn's layers are chosen).

Every event is also a named API endpoint (``/click``, ``/erf``, ...; see
:data:`ENDPOINTS`). Analytics are off and no asset comes from the internet (system fonts).
Models are chosen when the app starts (the command line), never from the page; uploads are
images only, within :class:`~hypercolumns.app.uploads.Limits`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hypercolumns.app import handlers
from hypercolumns.app.state import Explorer, State
from hypercolumns.errors import HypercolumnsError

if TYPE_CHECKING:
    import gradio as gr  # the annotations only: gradio is imported when a page is built

__all__ = ["ENDPOINTS", "IDS", "build", "launch", "missing_gradio"]

IDS = ("hc-image", "hc-rf", "hc-erf", "hc-similarity", "hc-target", "hc-layers", "hc-status")
"""The stable element ids of the page."""

ENDPOINTS = (
    "click",
    "similarity",
    "erf",
    "upload",
    "pick_image",
    "set_layers",
    "toggle_layer",
    "feature_maps",
    "mean_activation",
    "upload_target",
    "pick_target",
    "pca",
    "kmeans",
    "scribble",
)
"""The page's named API endpoints (``api_name``), one per event."""

INSTALL = "pip install 'hypercolumns[app]' (or, in a checkout, uv sync --extra app)"
_log = logging.getLogger("hypercolumns.app")
_CSS = """
#hc-status textarea { font-family: ui-monospace, monospace; font-size: 0.85em; }
.hc-legend { font-size: 0.85em; line-height: 1.8; }
#hc-match { font-size: 0.85em; }
"""
_NO_TARGET = "none"
_UPLOADED = "<uploaded>"  # the dropdowns' value for an uploaded image, while it is shown


def missing_gradio() -> str | None:
    """``None`` when Gradio can be imported, else a one-line message saying what to install."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        return f"the explorer needs Gradio, which is not installed: {INSTALL}"
    return None


def _gradio() -> Any:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio reads it
    os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")
    import gradio as gr

    return gr


def _theme(gr: Any) -> Any:
    """The default theme with system fonts: the stock one fetches Google Fonts."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "Consolas", "monospace"],
    )


def _pixel(evt: Any) -> tuple[int, int]:
    """The ``(y, x)`` of a Gradio image select event (Gradio gives ``[x, y]``)."""
    x, y = evt.index
    return int(y), int(x)


def editor_value(state: State) -> dict[str, Any]:
    """The scribble editor's value for the image on show: the image as background, no
    strokes."""
    return {"background": handlers.image_array_of(state), "layers": [], "composite": None}


def build(explorer: Explorer) -> gr.Blocks:
    """The page for ``explorer``; :func:`launch` serves it."""
    gr = _gradio()
    first = explorer.open(explorer.images[0])

    def current(state: State | None) -> State:
        return first if state is None else state

    def guarded(
        fn: Callable[..., tuple[Any, ...]], outputs: int, status_at: int
    ) -> Callable[..., tuple[Any, ...]]:
        """``fn`` whose user errors become a message in ``hc-status`` (and a toast), the other
        outputs unchanged; the server log gets one line, no traceback."""

        def run(*args: Any) -> tuple[Any, ...]:
            try:
                return fn(*args)
            except HypercolumnsError as err:
                _log.info("refused: %s", err)
                gr.Warning(str(err))
                out: list[Any] = [gr.skip()] * outputs
                out[status_at] = f"error: {err}"
                return tuple(out)

        functools.update_wrapper(run, fn)  # Gradio reads the signature: inputs, events
        # Gradio injects event data by the annotation; under postponed annotations it would
        # see a string it cannot resolve here, so give it the class.
        run.__annotations__ = {"evt": gr.SelectData} if "evt" in fn.__annotations__ else {}
        return run

    def image_choices() -> list[str]:
        return [str(p) for p in explorer.images]

    def image_labels() -> list[tuple[str, str]]:
        return [(p.name, str(p)) for p in explorer.images]

    def offered(*first: tuple[str, str], chosen: str = _UPLOADED, uploaded: str = "") -> Any:
        """A dropdown's update: ``first``, then the uploaded image while it is the one shown
        (named ``uploaded``, and chosen), then the images offered; ``chosen`` the value."""
        upload = [(f"uploaded: {uploaded}", _UPLOADED)] if uploaded else []
        return gr.update(choices=[*first, *upload, *image_labels()], value=chosen)

    with gr.Blocks(title=f"hypercolumns explore: {explorer.name}", analytics_enabled=False) as page:
        state = gr.State(None)
        clicked = gr.State(None)
        gr.Markdown(
            f"### hypercolumns explore: `{explorer.name}`, {explorer.weights} weights\n"
            "Click a pixel of the image: where each chosen layer looks from there (exact "
            "receptive fields, effective receptive field) and what it sees there (the "
            "hypercolumn)."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                image = gr.Image(
                    value=handlers.image_array_of(first),
                    label="image (click a pixel)",
                    elem_id="hc-image",
                    interactive=False,
                    type="numpy",
                    format="png",
                    buttons=[],
                )
                with gr.Row():
                    upload = gr.UploadButton(
                        "Upload an image",
                        file_types=["image"],
                        type="filepath",
                        elem_id="hc-upload",
                        size="sm",
                        scale=1,
                    )
                    pick = gr.Dropdown(
                        choices=image_labels(),
                        value=image_choices()[0],
                        label="or show",
                        elem_id="hc-pick",
                        interactive=True,
                        scale=2,  # room for an uploaded file's name
                    )
                status = gr.Textbox(
                    value=f"{first.name} {first.size[0]}x{first.size[1]}: click a pixel",
                    label="status",
                    elem_id="hc-status",
                    interactive=False,
                    lines=3,
                    max_lines=6,
                )
            with gr.Column(scale=1, min_width=300):
                rf = gr.Image(
                    label="receptive fields of the clicked pixel's units",
                    elem_id="hc-rf",
                    interactive=False,
                    type="numpy",
                    format="png",
                    buttons=["download"],
                )
                legend = gr.HTML("", elem_id="hc-rf-legend")
            with gr.Column(scale=1, min_width=300):
                sim_view = gr.Image(
                    label="cosine similarity of the clicked pixel's hypercolumn to every pixel",
                    elem_id="hc-similarity",
                    interactive=False,
                    type="numpy",
                    format="png",
                    buttons=["download"],
                )
                target_view = gr.Image(
                    label="second image: similarity and best match (green cross)",
                    elem_id="hc-target",
                    interactive=False,
                    type="numpy",
                    format="png",
                    buttons=["download"],
                )
                match = gr.Markdown("", elem_id="hc-match")
                with gr.Row():
                    target_upload = gr.UploadButton(
                        "Upload a second image",
                        file_types=["image"],
                        type="filepath",
                        elem_id="hc-target-upload",
                        size="sm",
                        scale=1,
                    )
                    target_pick = gr.Dropdown(
                        choices=[("none", _NO_TARGET), *image_labels()],
                        value=_NO_TARGET,
                        label="or compare with",
                        elem_id="hc-target-pick",
                        interactive=True,
                        scale=2,  # room for an uploaded file's name
                    )
        with gr.Tabs():
            with gr.Tab("Effective receptive field"):
                with gr.Row():
                    erf_layer = gr.Dropdown(
                        choices=[layer.name for layer in first.all_layers if layer.layout],
                        value=handlers.erf_layer(first).name,
                        label="layer (the clicked pixel's unit)",
                        interactive=True,
                    )
                    erf_on = gr.Checkbox(value=True, label="measure on every click")
                erf_view = gr.Image(
                    label="effective receptive field on this image (|gradient|, one image)",
                    elem_id="hc-erf",
                    interactive=False,
                    type="numpy",
                    format="png",
                )
            with gr.Tab("Hypercolumn"):
                profile = gr.Image(
                    label="hypercolumn at the clicked pixel, one block per layer",
                    elem_id="hc-profile",
                    interactive=False,
                    type="numpy",
                    format="png",
                )
            with gr.Tab("Feature maps"):
                with gr.Row():
                    fm_layer = gr.Dropdown(
                        choices=[layer.name for layer in first.all_layers if layer.layout],
                        value=first.layers[0].name,
                        label="layer",
                        interactive=True,
                    )
                    fm_mode = gr.Radio(
                        ["grid", "channel"], value="grid", label="show", interactive=True
                    )
                    fm_channel = gr.Number(value=0, precision=0, label="channel", minimum=0)
                    fm_go = gr.Button("Show", size="sm")
                fm_view = gr.Image(
                    label="feature maps", elem_id="hc-features", interactive=False, format="png"
                )
                mean_go = gr.Button("Mean hypercolumn activation", size="sm")
                mean_view = gr.Image(
                    label="mean hypercolumn activation",
                    elem_id="hc-mean",
                    interactive=False,
                    format="png",
                )
            with gr.Tab("PCA and clusters"):
                with gr.Row():
                    pca_go = gr.Button("PCA image", size="sm")
                    k_slider = gr.Slider(
                        2, len(handlers.CLUSTER_COLOURS), value=5, step=1, label="clusters k",
                        elem_id="hc-k", interactive=True,
                    )  # fmt: skip
                    kmeans_go = gr.Button("k-means clusters", size="sm")
                pca_view = gr.Image(
                    label="the image and its first three principal components as RGB",
                    elem_id="hc-pca",
                    interactive=False,
                    format="png",
                )
                kmeans_view = gr.Image(
                    label="the image and its k-means clusters of hypercolumns",
                    elem_id="hc-kmeans",
                    interactive=False,
                    format="png",
                )
            with gr.Tab("Scribble segmentation"):
                gr.Markdown(
                    "Paint strokes of two or more classes (one brush colour per class: "
                    + ", ".join(handlers.SCRIBBLE_CLASSES)
                    + "), then fit: a linear probe on the painted pixels' hypercolumns "
                    "segments the whole image. Download the probe for "
                    "`hypercolumns probe predict`."
                )
                editor = gr.ImageEditor(
                    value=editor_value(first),
                    label="paint scribbles",
                    elem_id="hc-scribble",
                    type="numpy",
                    image_mode="RGBA",
                    sources=[],
                    transforms=[],
                    layers=False,
                    brush=gr.Brush(
                        colors=list(handlers.SCRIBBLE_CLASSES.values()),
                        default_color=next(iter(handlers.SCRIBBLE_CLASSES.values())),
                        color_mode="fixed",
                        default_size=6,
                    ),
                    eraser=gr.Eraser(default_size=10),
                    canvas_size=(first.size[1], first.size[0]),
                    fixed_canvas=True,
                    height=520,
                )
                with gr.Row():
                    scribble_go = gr.Button("Fit probe and segment", size="sm", variant="primary")
                    probe_file = gr.File(
                        label="the probe (.safetensors)", elem_id="hc-probe", interactive=False
                    )
                seg_view = gr.Image(
                    label="segmentation by the probe",
                    elem_id="hc-segmentation",
                    interactive=False,
                    format="png",
                )
            with gr.Tab("Layers"):
                layers_text = gr.Textbox(
                    value=",".join(layer.name for layer in first.layers),
                    label="hypercolumn layers (names, indices or globs, comma-separated; or "
                    "click a row to add or remove it)",
                    elem_id="hc-layers-text",
                    interactive=True,
                )
                table = gr.Dataframe(
                    value=handlers.layer_rows(first),
                    headers=list(handlers.LAYER_COLUMNS),
                    elem_id="hc-layers",
                    interactive=False,
                    wrap=False,
                    max_height=420,
                )

        def on_click(st: State | None, evt: Any) -> tuple[Any, ...]:
            s = current(st)
            y, x = _pixel(evt)
            return (*handlers.click(s, y, x), (y, x))

        def on_similarity(st: State | None, where: tuple[int, int] | None) -> tuple[Any, ...]:
            if where is None:
                return (gr.skip(), gr.skip(), gr.skip(), gr.skip())
            s = current(st)
            y, x = where
            if s.target is None:
                return (handlers.similarity_image(s, y, x), None, "", gr.skip())
            found = handlers.correspondence(s, y, x)
            (my, mx), t = found.point, s.target
            text = (
                f"best match of (y={y}, x={x}) in {t.name} {t.size[0]}x{t.size[1]}: "
                f"(y={my}, x={mx}), cosine {found.score:.3f}"
            )
            return (handlers.similarity_image(s, y, x), handlers.target_image(s, y, x), text,
                    gr.skip())  # fmt: skip

        def on_target(s: State, where: tuple[int, int] | None) -> tuple[Any, ...]:
            t = s.target
            text = "" if t is None else f"second image: {t.name} {t.size[0]}x{t.size[1]}"
            out: tuple[Any, ...] = (s, None, text, text or gr.skip())
            if where is not None and t is not None:
                found = handlers.correspondence(s, *where)
                out = (s, handlers.target_image(s, *where), text + f"; best match {found.point}",
                       text)  # fmt: skip
            return out

        def on_target_upload(
            path: str | None, st: State | None, where: tuple[int, int] | None
        ) -> tuple[Any, ...]:
            if not path:
                raise HypercolumnsError("no file was uploaded")
            target = explorer.open(path)
            shown_now = on_target(current(st).with_target(target), where)
            return (*shown_now, offered(("none", _NO_TARGET), uploaded=target.name))

        def on_target_pick(
            choice: str, st: State | None, where: tuple[int, int] | None
        ) -> tuple[Any, ...]:
            s = current(st)
            if choice == _UPLOADED:  # the uploaded image, compared already
                return (gr.skip(),) * 5
            if choice != _NO_TARGET and choice not in image_choices():
                raise HypercolumnsError(f"{choice!r} is not one of the images offered")
            target = None if choice == _NO_TARGET else explorer.open(choice)
            shown_now = on_target(s.with_target(target), where)
            return (*shown_now, offered(("none", _NO_TARGET), chosen=choice))

        def on_pca(st: State | None) -> tuple[Any, ...]:
            return (handlers.pca_image(current(st)), gr.skip())

        def on_kmeans(st: State | None, k: float) -> tuple[Any, ...]:
            return (handlers.kmeans_image(current(st), int(k)), gr.skip())

        def on_scribble(st: State | None, strokes: Any) -> tuple[Any, ...]:
            s = current(st)
            labels = handlers.scribble_labels(strokes, s.size)
            probe = handlers.scribble(s, labels)
            painted = int((labels != 255).sum())
            message = (
                f"probe fitted on {painted} painted pixels of classes "
                f"{', '.join(probe.classes)}; {len(probe.layers)} layers"
            )
            return (handlers.segmentation_image(s, probe), str(handlers.save_probe(probe)),
                    message)  # fmt: skip

        def on_erf(
            st: State | None, where: tuple[int, int] | None, layer: str, on: bool
        ) -> tuple[Any, ...]:
            if where is None or not on:
                return (gr.skip(), gr.skip())
            s = current(st)
            return (handlers.erf_image(s, where[0], where[1], layer), gr.skip())

        def shown(s: State, message: str) -> tuple[Any, ...]:
            """The outputs that change with the image or the layers."""
            names = [layer.name for layer in s.all_layers if layer.layout]
            return (
                None,
                None,
                "",
                editor_value(s),
                None,
                None,
                None,
                s,
                handlers.image_array_of(s),
                message,
                handlers.layer_rows(s),
                ",".join(layer.name for layer in s.layers),
                None,
                "",
                None,
                None,
                gr.update(choices=names, value=handlers.erf_layer(s).name),
                None,
            )

        def on_upload(path: str | None, st: State | None, spec: str) -> tuple[Any, ...]:
            if not path:
                raise HypercolumnsError("no file was uploaded")
            s = explorer.open(path, spec or None).with_target(current(st).target)
            shown_now = shown(s, f"{s.name} {s.size[0]}x{s.size[1]}: click a pixel")
            return (*shown_now, offered(uploaded=s.name))

        def on_pick(choice: str, st: State | None, spec: str) -> tuple[Any, ...]:
            if choice == _UPLOADED:  # the uploaded image, shown already
                return (gr.skip(),) * (len(shown_out) + 1)
            if choice not in image_choices():
                raise HypercolumnsError(f"{choice!r} is not one of the images offered")
            s = explorer.open(choice, spec or None).with_target(current(st).target)
            shown_now = shown(s, f"{s.name} {s.size[0]}x{s.size[1]}: click a pixel")
            return (*shown_now, offered(chosen=choice))

        def on_layers(spec: str, st: State | None) -> tuple[Any, ...]:
            s = current(st).with_layers(spec)
            names = ", ".join(layer.name for layer in s.layers)
            return shown(s, f"hypercolumn layers: {names}; click a pixel")

        def on_toggle(st: State | None, evt: Any) -> tuple[Any, ...]:
            s = current(st)
            row = evt.row_value
            name = str(row[2]) if row is not None and len(row) > 2 else ""
            names = [layer.name for layer in s.layers]
            names = [n for n in names if n != name] if name in names else [*names, name]
            if not names:
                raise HypercolumnsError("the hypercolumn needs at least one layer")
            order = {layer.name: k for k, layer in enumerate(s.all_layers)}
            return on_layers(",".join(sorted(names, key=lambda n: order.get(n, 0))), s)

        def on_features(
            st: State | None, layer: str, mode: str, channel: float | None
        ) -> tuple[Any, ...]:
            s = current(st)
            if mode == "channel":
                return (handlers.channel_image(s, layer, int(channel or 0)), gr.skip())
            return (handlers.channel_grid_image(s, layer), gr.skip())

        def on_mean(st: State | None) -> tuple[Any, ...]:
            return (handlers.mean_activation_image(current(st)), gr.skip())

        click_out = [status, rf, legend, profile, clicked]
        shown_out = [state, image, status, table, layers_text, rf, legend, profile, erf_view]
        shown_out += [erf_layer, fm_view]
        shown_out = [sim_view, target_view, match, editor, seg_view, pca_view, kmeans_view,
                     *shown_out]  # fmt: skip
        status_in_shown = shown_out.index(status)
        image.select(
            guarded(on_click, len(click_out), 0), [state], click_out, api_name="click"
        ).then(
            guarded(on_similarity, 4, 3),
            [state, clicked],
            [sim_view, target_view, match, status],
            api_name="similarity",
        ).then(
            guarded(on_erf, 2, 1),
            [state, clicked, erf_layer, erf_on],
            [erf_view, status],
            api_name="erf",
            show_progress_on=erf_view,
        )
        gr.on(
            [erf_layer.change],
            guarded(on_erf, 2, 1),
            [state, clicked, erf_layer, erf_on],
            [erf_view, status],
            api_visibility="private",
            show_progress_on=erf_view,
        )
        upload.upload(
            guarded(on_upload, len(shown_out) + 1, status_in_shown),
            [upload, state, layers_text],
            [*shown_out, pick],
            api_name="upload",
        )
        pick.input(
            guarded(on_pick, len(shown_out) + 1, status_in_shown),
            [pick, state, layers_text],
            [*shown_out, pick],
            api_name="pick_image",
        )
        layers_text.submit(
            guarded(on_layers, len(shown_out), status_in_shown),
            [layers_text, state],
            shown_out,
            api_name="set_layers",
        )
        table.select(
            guarded(on_toggle, len(shown_out), status_in_shown),
            [state],
            shown_out,
            api_name="toggle_layer",
        )
        fm_go.click(
            guarded(on_features, 2, 1),
            [state, fm_layer, fm_mode, fm_channel],
            [fm_view, status],
            api_name="feature_maps",
            show_progress_on=fm_view,
        )
        mean_go.click(
            guarded(on_mean, 2, 1),
            [state],
            [mean_view, status],
            api_name="mean_activation",
            show_progress_on=mean_view,
        )

        target_out = [state, target_view, match, status, target_pick]
        target_upload.upload(
            guarded(on_target_upload, 5, 3),
            [target_upload, state, clicked],
            target_out,
            api_name="upload_target",
        )
        target_pick.input(
            guarded(on_target_pick, 5, 3),
            [target_pick, state, clicked],
            target_out,
            api_name="pick_target",
        )
        pca_go.click(
            guarded(on_pca, 2, 1), [state], [pca_view, status], api_name="pca",
            show_progress_on=pca_view,
        )  # fmt: skip
        gr.on(
            [kmeans_go.click, k_slider.release],
            guarded(on_kmeans, 2, 1),
            [state, k_slider],
            [kmeans_view, status],
            api_name="kmeans",
            show_progress_on=kmeans_view,
        )
        scribble_go.click(
            guarded(on_scribble, 3, 2),
            [state, editor],
            [seg_view, probe_file, status],
            api_name="scribble",
            show_progress_on=seg_view,
        )

    return page  # type: ignore[no-any-return]


def launch(
    explorer: Explorer,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = True,
    quiet: bool = False,
) -> tuple[Any, str]:
    """Serve the page on ``host:port`` (``127.0.0.1`` unless told otherwise; never a public
    share link). Returns the Gradio app and its local URL; with ``block=False`` the server
    runs in a thread (``page.close()`` stops it)."""
    gr = _gradio()
    page = build(explorer)
    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        max_file_size=explorer.limits.max_bytes,
        footer_links=["api"],
        quiet=True,
        show_error=True,
        theme=_theme(gr),
        css=_CSS,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
    )
    url = str(page.local_url)
    if not quiet:
        print(f"hypercolumns explore: {explorer.name} on {url} (Ctrl-C stops)", flush=True)
    if block:
        page.block_thread()
    return page, url
