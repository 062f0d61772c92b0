"""The deployable-artifact format shared by ``export/`` (the only writer) and ``engines/`` (readers).

``graphs``: the three graphs' boundaries (wrapper modules, input/output names, flat
argument order); ``manifest``: ``manifest.json`` beside the graph files and the checks
made when loading them; ``tensorrt``: where Torch-TensorRT graphs live and how to import
their runtime.
"""
