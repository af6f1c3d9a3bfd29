"""AUTOMATIC1111 entry point: the "Anybody" tab, the /anybody/v1/ routes and the txt2img/img2img identity script.

Thin: everything lives in the ``anybody`` package (imported here while the webui has this extension's folder on
``sys.path``; later imports of its submodules go through the package).
"""
from modules import script_callbacks

from anybody.host.a1111 import FORGE_MESSAGE, is_forge

if is_forge():
    print(f"[Anybody] {FORGE_MESSAGE}", flush=True)

    def _forge_tab():
        import gradio as gr

        with gr.Blocks(analytics_enabled=False) as tab:
            gr.HTML(f"<p>{FORGE_MESSAGE}</p>")
        return [(tab, "Anybody", "anybody")]

    script_callbacks.on_ui_tabs(_forge_tab)
else:
    from anybody.a1111 import routes, tab
    from anybody.a1111.inject import make_script_class

    script_callbacks.on_ui_tabs(tab.build)
    script_callbacks.on_app_started(lambda demo, app: routes.register(app))
    AnybodyIdentityScript = make_script_class()
