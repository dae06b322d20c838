"""The runtime spine: an export folder, a video file and a question in; an answer out. No torch.

    video file --(PyAV, sampling, CLIP preprocessing; numpy)--> pixel_values [T,3,S,S]
    prompt ids (`tokenizers`) and pixels --> prunevid.runtime.chain over ONNX Runtime --> tokens

The chain (graph order, splicing, selection, the fixed KV cache) lives in
:mod:`prunevid.runtime.chain`; this module adds the export folder, the tokenizer, timings and the
answer record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from prunevid import spec
from prunevid.runtime.artifact import open_artifact
from prunevid.runtime.backend import OrtBackend
from prunevid.runtime.chain import Chain
from prunevid.runtime.report import Answer, Stopwatch

MODES = ("prunevid", "merge", "none")


class RuntimePipeline:
    """Answers questions about videos from an export folder alone. Load once, answer many times."""

    def __init__(self, engine_dir: str | Path, mode: str | None = None, providers: list[str] | None = None,
                 verify: bool = True, threads: int = 0):
        """``mode`` None takes the mode the folder was exported with; ``threads`` 0 is ONNX Runtime's
        default intra-op pool."""
        from prunevid.errors import ConfigError
        from prunevid.runtime.text import TextTokenizer
        from prunevid.runtime.video import Preprocess

        self.artifact = open_artifact(engine_dir, verify=verify)
        mode = mode or self.artifact.prune["mode"]
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode}")
        self.mode = mode
        self.geometry = self.artifact.geometry
        self.tokenizer = TextTokenizer.from_dir(self.artifact.root)
        self.preprocess = Preprocess.from_json(self.artifact.root / spec.PREPROCESSOR_FILE, self.geometry.image_size)
        self.float_type = np.float16 if self.artifact.manifest.get("dtype") == "fp16" else np.float32
        paths = {name: self.artifact.graph_path(name) for name in spec.GRAPH_ORDER}
        self.backend = OrtBackend(paths, providers, threads)
        self.backend.warm_up()
        self.chain = Chain(self.backend, self.geometry, self.float_type)
        self.last_trace: dict = {}  # hook for prunevid.explain: merger layout and keep index of the last run

    @property
    def model(self) -> dict:
        return self.artifact.manifest["model"]

    def prompt(self, question: str, template: str | None):
        from prunevid.runtime.text import build_prompt

        return build_prompt(self.tokenizer, question, template or self.model["template"], self.model["image_token_index"],
                            self.model.get("after_visual_ids", ()))

    def run(self, video: str | Path, question: str, *, max_new_tokens: int = 64, template: str | None = None,
            on_token: Callable[[int], None] | None = None) -> Answer:
        from prunevid.runtime.text import check_fits
        from prunevid.runtime.video import load_video

        g, chain = self.geometry, self.chain
        prompt = self.prompt(question, template)
        ids = np.asarray(prompt.ids, dtype=np.int64)
        ctx = self.model["max_position_embeddings"]
        if self.mode == "none":
            check_fits(len(ids), g.max_visual, max_new_tokens, ctx)
        clock = Stopwatch()
        with clock.stage("video"):
            pixels = load_video(video, g.frames, self.preprocess).astype(self.float_type)  # [T, 3, S, S]
        with clock.stage("encoder"):
            features = chain.encode(pixels)
        with clock.stage("merge"):
            visual = chain.visual(features, merge=self.mode != "none")
        check_fits(len(ids), visual.count, max_new_tokens, ctx)
        with clock.stage("prefill"):
            state = chain.prefill(ids, prompt.image_pos, visual, self.mode == "prunevid", max_new_tokens)
        self.last_trace = {"merger": visual.layout(), "keep_index": state.keep, "image_pos": prompt.image_pos,
                           "num_merged": visual.count}
        with clock.stage("decode"):
            tokens = list(chain.greedy(state, max_new_tokens, self.tokenizer.eos_id, on_token))
        return Answer(
            answer=self.tokenizer.decode(tokens),
            token_ids=tokens,
            visual_tokens={"encoder": g.max_visual, "merged": visual.count, "kept": state.visual_kept},
            timings_ms=clock.ms,
            prompt_tokens={"text": len(ids) - 1, "prefill": state.seq_len, "kept": state.kept},
            segments=self._segments(visual.groups, visual.windows),
            settings={**self.artifact.prune, "mode": self.mode, "backend": f"onnxruntime-{self.backend.device}"},
        )

    @staticmethod
    def _segments(groups, windows) -> dict[str, list[int]]:
        """Recover static/dynamic sizes per segment from the token-order group sizes."""
        if groups is None:
            return {}
        windows = [int(w) for w in windows if w > 0]
        groups = [int(x) for x in groups]
        static, dynamic, i = [], [], 0
        for w in windows:
            static.append(groups[i])
            dynamic.append(sum(groups[i + 1 : i + 1 + w]))
            i += 1 + w
        return {"window_sizes": windows, "static_sizes": static, "dynamic_sizes": dynamic}
