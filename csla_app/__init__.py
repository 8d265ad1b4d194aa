"""The portrait editor's Gradio parts beside ``app.py`` (which holds the layout and the wiring).

- ``model``: ``PortraitEditor``, the object the events call: one method per UI action, around
  the editing service (``csla_core.service``);
- ``settings``: ``EditSettings``, the first tab's edit controls as one value;
- ``errors``: any exception -> a message a user can act on;
- ``gradio_fixes``: the workarounds for gradio, installed when a demo is built (not at import);
- ``launch``: running the app privately on 127.0.0.1 (tests, the load test).
"""
