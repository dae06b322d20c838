"""prunevid: PruneVid visual-token pruning for video LLMs, from eager reference to deployable graphs.

Importing the package is cheap: nothing heavy (torch, onnx, tensorrt) is imported here.
"""

__version__ = "0.1.0"
