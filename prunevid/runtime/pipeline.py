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
from prunevid.runtime.backend import open_backend
from prunevid.runtime.chain import Chain
from prunevid.runtime.report import Answer, Stopwatch

MODES = ("prunevid", "merge", "none")


class RuntimePipeline:
    """Answers questions about videos from an export folder alone. Load once, answer many times."""

    def __init__(self, engine_dir: str | Path, mode: str | None = None, providers: list[str] | None = None,
                 verify: bool = True, threads: int = 0, backend="ort"):
        """``mode`` None takes the mode the folder was exported with; ``threads`` 0 is ONNX Runtime's
        default intra-op pool; ``backend`` is a name of :data:`prunevid.runtime.backend.BACKENDS` or a
        runner object (``run(graph, feeds)``, ``warm_up()``, ``device``)."""
        from prunevid.runtime.text import TextTokenizer
        from prunevid.runtime.video import Preprocess

        self.artifact = open_artifact(engine_dir, verify=verify)
        self.mode = self._mode(mode or self.artifact.prune["mode"])
        self.geometry = self.artifact.geometry
        self.tokenizer = TextTokenizer.from_dir(self.artifact.root)
        self.preprocess = Preprocess.from_json(self.artifact.root / spec.PREPROCESSOR_FILE, self.geometry.image_size)
        self.float_type = np.float16 if self.artifact.manifest.get("dtype") == "fp16" else np.float32
        paths = {name: self.artifact.graph_path(name) for name in spec.GRAPH_ORDER}
        self.backend = (open_backend(backend, paths, providers, threads, self.artifact.root,
                                     self.artifact.disabled_optimizers)
                        if isinstance(backend, str) else backend)
        self.backend.warm_up()
        self.chain = Chain(self.backend, self.geometry, self.float_type)
        self._last_prompt = None  # ((question, template), prompt) of the last prompt() call
        self.last_trace: dict = {}  # hook for prunevid.explain: merger layout and keep index of the last run

    @property
    def model(self) -> dict:
        return self.artifact.manifest["model"]

    def prompt(self, question: str, template: str | None):
        """The prompt ids of ``question`` under ``template``; the last one is remembered, so that
        :meth:`run`'s up-front check and :meth:`generate` tokenise it once."""
        from prunevid.runtime.text import export_prompt

        last = self._last_prompt  # one read: (key, prompt), replaced whole (threads may share the pipeline)
        if last is None or last[0] != (question, template):
            last = ((question, template), export_prompt(self.tokenizer, self.model, question, template))
            self._last_prompt = last
        return last[1]

    def run(self, video: str | Path, question: str, *, max_new_tokens: int = 64, template: str | None = None,
            on_token: Callable[[int], None] | None = None) -> Answer:
        """:meth:`prepare` then :meth:`generate` in the constructor's mode."""
        self.check_prompt(question, template, max_new_tokens, self.mode)
        clock = Stopwatch()
        with clock.stage("video"):
            pixels = self.prepare(video)
        answer = self.generate(pixels, question, max_new_tokens=max_new_tokens, template=template,
                               on_token=on_token, clock=clock)
        del pixels  # [T, 3, S, S], tens of MB on the heap: returned with the rest between answers
        release = getattr(self.backend, "release", None)
        if release is not None:
            release()
        return answer

    def prepare(self, video: str | Path) -> np.ndarray:
        """Decode, sample and preprocess ``video``: pixel_values ``[T, 3, S, S]`` in the graphs' float type."""
        from prunevid.runtime.video import load_video

        return load_video(video, self.geometry.frames, self.preprocess).astype(self.float_type)  # [T, 3, S, S]

    def check_prompt(self, question: str, template: str | None, max_new_tokens: int, mode: str) -> None:
        """Raise :class:`PromptError` before any video work when the answer cannot fit the context
        (only knowable up front for ``none``, whose visual count is fixed)."""
        from prunevid.runtime.text import check_fits

        ids = self.prompt(question, template).ids
        if self._mode(mode) == "none":
            check_fits(len(ids), self.geometry.max_visual, max_new_tokens, self.model["max_position_embeddings"])

    def generate(self, pixels: np.ndarray, question: str, *, mode: str | None = None, max_new_tokens: int = 64,
                 template: str | None = None, on_token: Callable[[int], None] | None = None,
                 cancel: Callable[[], bool] | None = None, clock: Stopwatch | None = None) -> Answer:
        """Answer ``question`` about prepared ``pixels [T, 3, S, S]`` in ``mode`` (None: the constructor's).

        Every mode runs on the same sessions. ``cancel`` is polled after every generated token: when
        it returns True no further decode step runs and the answer holds the tokens so far."""
        from prunevid.runtime.text import check_fits

        mode = self._mode(mode)
        g, chain = self.geometry, self.chain
        prompt = self.prompt(question, template)
        ids = np.asarray(prompt.ids, dtype=np.int64)
        ctx = self.model["max_position_embeddings"]
        clock = clock or Stopwatch()
        with clock.stage("encoder"):
            features = chain.encode(pixels)
        with clock.stage("merge"):
            visual = chain.visual(features, merge=mode != "none")
        check_fits(len(ids), visual.count, max_new_tokens, ctx)
        with clock.stage("prefill"):
            state = chain.prefill(ids, prompt.image_pos, visual, mode == "prunevid", max_new_tokens)
        self.last_trace = {"merger": visual.layout(), "keep_index": state.keep, "image_pos": prompt.image_pos,
                           "num_merged": visual.count}
        tokens: list[int] = []
        with clock.stage("decode"):
            for token in chain.greedy(state, max_new_tokens, self.tokenizer.eos_id, on_token):
                tokens.append(token)
                if cancel is not None and cancel():
                    break  # the generator stops here: no further decode step runs
        return Answer(
            answer=self.tokenizer.decode(tokens),
            token_ids=tokens,
            visual_tokens={"encoder": g.max_visual, "merged": visual.count, "kept": state.visual_kept},
            timings_ms=clock.ms,
            prompt_tokens={"text": len(ids) - 1, "prefill": state.seq_len, "kept": state.kept},
            segments=self._segments(visual.groups, visual.windows),
            settings={**self.artifact.prune, "mode": mode, "backend": getattr(self.backend, "name", f"onnxruntime-{self.backend.device}")},
        )

    def _mode(self, mode: str | None) -> str:
        from prunevid.errors import ConfigError

        mode = mode or self.mode
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode}")
        return mode

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
