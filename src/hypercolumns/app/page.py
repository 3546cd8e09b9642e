"""The explorer's page: a Gradio Blocks layout wired to :mod:`hypercolumns.app.handlers`.

Gradio is imported here only, and only when a page is built, so the package works without
the ``app`` extra. The page:

- ``hc-image``: the image (click a pixel); an upload button and the images given on the
  command line beside it; ``hc-status``: a line describing the last click (or what went wrong);
- ``hc-rf``: the clicked pixel's unit in each chosen layer, its exact box on the image (one
  colour per layer); ``hc-similarity`` and ``hc-target``: the similarity view and its second
  image, placeholders until ``hc.similarity`` lands (see ``docs/explore.md``);
- tabs: ``hc-erf`` (the unit's effective receptive field on this image), the hypercolumn
  profile, feature maps and the mean hypercolumn activation, ``hc-layers`` (the layer table,
  where the hypercolumn's layers are chosen).

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
    "erf",
    "upload",
    "pick_image",
    "set_layers",
    "toggle_layer",
    "feature_maps",
    "mean_activation",
)
"""The page's named API endpoints (``api_name``), one per event."""

INSTALL = "pip install 'hypercolumns[app]' (or, in a checkout, uv sync --extra app)"
_log = logging.getLogger("hypercolumns.app")
_CSS = """
#hc-status textarea { font-family: ui-monospace, monospace; font-size: 0.85em; }
.hc-legend { font-size: 0.85em; line-height: 1.8; }
"""


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
                    )
                    pick = gr.Dropdown(
                        choices=image_labels(),
                        value=image_choices()[0],
                        label="or show",
                        elem_id="hc-pick",
                        interactive=True,
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
                # PLACEHOLDER: the similarity view plugs in here when hc.similarity and
                # hc.correspond land (docs/explore.md, "Views to come"); nothing is computed.
                gr.Markdown(
                    "**Similarity** of the clicked pixel's hypercolumn to every pixel, and "
                    "correspondence in a second image: these views come with "
                    "`hc.similarity` and `hc.correspond` (not in this version yet).",
                    elem_id="hc-similarity-note",
                )
                gr.Image(
                    label="similarity to the clicked pixel (to come)",
                    elem_id="hc-similarity",
                    interactive=False,
                    format="png",
                )
                gr.Image(
                    label="second image (correspondence, to come)",
                    elem_id="hc-target",
                    interactive=False,
                    format="png",
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
            s = explorer.open(path, spec or None)
            return shown(s, f"{s.name} {s.size[0]}x{s.size[1]}: click a pixel")

        def on_pick(choice: str, st: State | None, spec: str) -> tuple[Any, ...]:
            if choice not in image_choices():
                raise HypercolumnsError(f"{choice!r} is not one of the images offered")
            s = explorer.open(choice, spec or None)
            return shown(s, f"{s.name} {s.size[0]}x{s.size[1]}: click a pixel")

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
        image.select(
            guarded(on_click, len(click_out), 0), [state], click_out, api_name="click"
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
            api_name=False,
            show_progress_on=erf_view,
        )
        upload.upload(
            guarded(on_upload, len(shown_out), 2),
            [upload, state, layers_text],
            shown_out,
            api_name="upload",
        )
        pick.input(
            guarded(on_pick, len(shown_out), 2),
            [pick, state, layers_text],
            shown_out,
            api_name="pick_image",
        )
        layers_text.submit(
            guarded(on_layers, len(shown_out), 2),
            [layers_text, state],
            shown_out,
            api_name="set_layers",
        )
        table.select(
            guarded(on_toggle, len(shown_out), 2), [state], shown_out, api_name="toggle_layer"
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
