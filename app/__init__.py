"""The app on top of the house: the pipeline's declared dataflow graph (``app.dataflow``), the
runner that walks it (``app.runner``) and the ``lakehouse`` command (``app.cli``)."""
