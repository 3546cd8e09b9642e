"""The browser explorer (``hypercolumns explore``): a local Gradio app, the optional extra
``hypercolumns[app]``."""
