"""Exported merger (ONNX Runtime) vs the eager reference on near-static features at a real width.

    python benchmarks/near_static.py [--hidden 768] [--clips 200]

Features are ``base + eps * noise`` (one still scene ``[1, 144, C]``, per-frame noise
``[16, 144, C]``) for eps in 1e-4, 1e-3, 1e-2, 1e-1, as ``tests/test_near_static.py`` checks at a
small width. Prints per eps how many clips have identical segments and token counts, and how many
are identical in every token (within 1e-5) and in ``token_of_cell``.
"""

from __future__ import annotations

import argparse


def main() -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from prunevid.config import PruneConfig
    from prunevid.exporter.merger import merger_onnx
    from prunevid.pruning import merge_video_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--clips", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(merger_onnx(PruneConfig(), 16, 144, args.hidden), opts,
                                   providers=["CPUExecutionProvider"])
    for eps in (1e-4, 1e-3, 1e-2, 1e-1):
        layout = same = 0
        for seed in range(args.clips):
            gen = torch.Generator().manual_seed(seed)
            video = torch.randn(1, 144, args.hidden, generator=gen)
            video = video + eps * torch.randn(16, 144, args.hidden, generator=gen)
            ref = merge_video_tokens(video)
            merged, num, _, windows, cells = session.run(None, {"visual_features": video.numpy()})
            ok = int(num) == ref.num_tokens and [int(w) for w in windows if w > 0] == ref.window_sizes
            layout += ok
            same += ok and np.array_equal(cells, ref.token_of_cell.numpy()) and np.allclose(
                merged[: ref.num_tokens], ref.tokens.numpy(), atol=1e-5, rtol=0)
        print(f"C={args.hidden} eps={eps:g}: segments+counts identical {layout}/{args.clips}, "
              f"all tokens identical {same}/{args.clips}", flush=True)


if __name__ == "__main__":
    main()
