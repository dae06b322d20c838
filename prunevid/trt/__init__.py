"""The TensorRT path: static parser checks (:mod:`compat`), trtexec command lines and engine builds
(:mod:`build`), and the prunevid plugin library (:mod:`plugins`). Nothing here imports
``tensorrt`` at module level."""
