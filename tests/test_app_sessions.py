"""Block configs made once per page (``app.SavedBlockConfigs``) against Gradio's own, per session."""

from __future__ import annotations

import gradio as gr
from gradio.blocks import BlocksConfig
from gradio.state_holder import SessionState

import app as app_module
from vse.testing.app_runner import api_call, free_port


def small_page() -> gr.Blocks:
    with app_module.CheckedBlocks() as page:
        words = gr.Textbox("hello", label="words")
        table = gr.Dataframe([[1, "a"]], headers=["n", "s"])
        count = gr.State(0)
        shown = gr.Markdown("nothing yet")

        def echo(text: str, seen: int):
            return f"**{text.upper()}**", seen + 1

        words.submit(echo, [words, count], [shown, count], api_name="echo")
        gr.Button("Go").click(lambda: gr.Dataframe(headers=["other"]), None, table, api_name="relabel")
    return page


def gradio_configs(page: gr.Blocks, blocks: dict) -> dict:
    """What Gradio itself makes for every block of a session."""
    return {key: BlocksConfig.config_for_block(key, [], block) for key, block in blocks.items() if key in page.blocks}


def test_a_new_session_gets_gradios_configs_as_its_own_copies():
    page = small_page()
    assert isinstance(page.default_config, app_module.SavedBlockConfigs)
    first, second = SessionState(page), SessionState(page)
    assert first.config_values == gradio_configs(page, page.blocks) == second.config_values
    assert page.default_config.saved  # made once, then copied
    key = next(key for key, config in first.config_values.items() if "value" in config.get("props", {}))
    first._update_value_in_config(key, "changed in one session")  # Gradio writes into a session's config
    assert second.config_values[key]["props"]["value"] != "changed in one session"
    assert SessionState(page).config_values == gradio_configs(page, page.blocks)


def gradio_session(page: gr.Blocks) -> SessionState:
    """A session made as Gradio makes it, every config computed."""
    saving = type(page.default_config)
    page.default_config.__class__ = BlocksConfig
    try:
        return SessionState(page)
    finally:
        page.default_config.__class__ = saving


def test_sessions_that_replace_blocks_keep_configs_as_gradio_makes_them():
    page = small_page()
    session, reference = SessionState(page), gradio_session(page)
    assert type(reference.blocks_config) is BlocksConfig and session.config_values == reference.config_values
    table_id = next(key for key, block in page.blocks.items() if isinstance(block, gr.Dataframe))
    for state in (session, reference):  # what an update returned by a handler does
        state[table_id] = gr.Dataframe(headers=["other"])
        state._update_config(table_id)
    assert session.config_values == reference.config_values
    assert session.config_values[table_id]["props"]["headers"] == ["other"]
    assert page.default_config.saved[table_id][0] is page.blocks[table_id]  # the page's own block, not the session's
    assert SessionState(page).config_values == gradio_configs(page, page.blocks)


def test_calls_without_a_session_are_answered_and_the_page_config_is_gradios():
    """Each HTTP API call without a session hash makes a new session (as curl does)."""
    import httpx

    page = small_page()
    expected = gradio_configs(page, page.blocks)
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        for text in ("one", "two", "three"):
            assert api_call(url, "echo", [text]) == ("complete", [f"**{text.upper()}**", None])  # a State is not sent
        assert api_call(url, "relabel", [])[0] == "complete"
        served = httpx.get(f"{url}config", timeout=30).json()["components"]
        page.default_config.__class__ = BlocksConfig
        try:
            made = httpx.get(f"{url}config", timeout=30).json()["components"]
        finally:
            page.default_config.__class__ = app_module.SavedBlockConfigs
        assert served == made
        # Gradio writes each call's inputs and outputs into its own session's configs, and nowhere else.
        written = [
            {expected[key]["type"]: config["props"].get("value") for key, config in state.config_values.items()
             if config != expected[key]}
            for state in page.state_holder.session_data.values()
        ]  # fmt: skip
        assert written[:3] == [{"textbox": text, "markdown": f"**{text.upper()}**"} for text in ("one", "two", "three")]
        assert written[3] == {"dataframe": {"headers": ["other"], "data": [], "metadata": None}}
    finally:
        page.close()


def test_matplotlibs_backend_is_resolved_before_the_first_event():
    """Gradio resolves it around every event; the first resolution imports pyplot."""
    import subprocess
    import sys

    check = (
        "import sys, app; assert 'matplotlib.pyplot' not in sys.modules; app.resolve_plot_backend(); "
        "assert 'matplotlib.pyplot' in sys.modules"
    )
    environment = {name: value for name, value in app_module.os.environ.items() if name != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", check], cwd=app_module.Path(app_module.__file__).parent,
                          env=environment, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
