"""The runtime spine: an export folder, a video file and a question in; an answer out. No torch.

    video file --(PyAV, sampling, CLIP preprocessing; numpy)--> pixel_values [T,3,S,S]
    [encoder]          --> visual_features [T,L,C]
    [merger]           --> merged_tokens, num_merged, group_sizes, window_sizes   (skipped for --mode none)
    [decoder_prefill]  --> hidden_k, visual_scores, KV of layers 0..K              (prompt ids from `tokenizers`)
    [select]           --> keep_index [S] padded, num_kept (sliced on the host)   (arange(S) unless selecting)
    [decoder_late]     --> logits of the last position, KV of every layer at the kept positions
    [decode_step] x n  --> one token at position S + j each                       (greedy, streamed)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from prunevid import spec
from prunevid.runtime.artifact import open_artifact
from prunevid.runtime.backend import OrtBackend
from prunevid.runtime.report import Answer, Stopwatch

MODES = ("prunevid", "merge", "none")


def _int(value) -> int:
    return int(np.asarray(value).reshape(()))


class RuntimePipeline:
    """Answers questions about videos from an export folder alone. Load once, answer many times."""

    def __init__(self, engine_dir: str | Path, mode: str | None = None, providers: list[str] | None = None,
                 verify: bool = True):
        """``mode`` None takes the mode the folder was exported with."""
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
        self.backend = OrtBackend(paths, providers)
        self.backend.warm_up()
        self.last_trace: dict = {}  # hook for prunevid.explain: merger outputs and keep index of the last run

    @property
    def model(self) -> dict:
        return self.artifact.manifest["model"]

    def prompt(self, question: str, template: str | None):
        from prunevid.runtime.text import build_prompt

        return build_prompt(self.tokenizer, question, template or self.model["template"], self.model["image_token_index"])

    def visual_tokens(self, features, clock: Stopwatch):
        """Merged tokens (or the flattened encoder output for the baseline) and their layout."""
        g = self.geometry
        if self.mode == "none":
            flat = self.backend.host(features).reshape(g.max_visual, g.hidden)  # [T*L, C]
            return flat, g.max_visual, None, None
        with clock.stage("merge"):
            out = self.backend.run("merger", {"visual_features": features})
            self.last_trace["merger"] = out  # hook for prunevid.explain
            num = _int(self.backend.host(out["num_merged"]))
            groups = self.backend.host(out["group_sizes"])
        return out["merged_tokens"], num, groups, self.backend.host(out["window_sizes"])

    def run(self, video: str | Path, question: str, *, max_new_tokens: int = 64, template: str | None = None,
            on_token: Callable[[int], None] | None = None) -> Answer:
        from prunevid.runtime.text import check_fits
        from prunevid.runtime.video import load_video

        g, run, host = self.geometry, self.backend.run, self.backend.host
        prompt = self.prompt(question, template)
        ids = np.asarray(prompt.ids, dtype=np.int64)
        image_pos = np.asarray(prompt.image_pos, dtype=np.int64)
        ctx = self.model["max_position_embeddings"]
        if self.mode == "none":
            check_fits(len(ids), g.max_visual, max_new_tokens, ctx)
        clock = Stopwatch()
        with clock.stage("video"):
            pixels = load_video(video, g.frames, self.preprocess).astype(self.float_type)  # [T, 3, S, S]
        with clock.stage("encoder"):
            features = run("encoder", {"pixel_values": pixels})["visual_features"]
        clock.ms.setdefault("merge", 0.0)
        self.last_trace = {}
        merged, num, groups, windows = self.visual_tokens(features, clock)
        check_fits(len(ids), num, max_new_tokens, ctx)
        seq_len = len(ids) - 1 + num
        with clock.stage("prefill"):
            pre = run("decoder_prefill", {"input_ids": ids, "image_pos": image_pos, "merged_tokens": merged,
                                          "num_merged": np.asarray(num, dtype=np.int64)})
            if self.mode == "prunevid":
                sel = run("select", {"visual_scores": pre["visual_scores"], "group_sizes": groups,
                                     "image_pos": image_pos, "input_ids": ids})
                keep = host(sel["keep_index"])[: _int(host(sel["num_kept"]))]  # fixed size, padded
            else:
                keep = np.arange(seq_len, dtype=np.int64)
            early = spec.present_names(range(g.select_layer + 1))
            late = run("decoder_late", {"hidden_k": pre["hidden_k"], "keep_index": keep,
                                        **{spec.as_past(n): pre[n] for n in early}})
            logits = host(late["logits"])
        kept = len(host(keep))
        self.last_trace.update(keep_index=keep, image_pos=prompt.image_pos, num_merged=num)
        with clock.stage("decode"):
            tokens = self._greedy(logits, late, seq_len, max_new_tokens, on_token)
        return Answer(
            answer=self.tokenizer.decode(tokens),
            token_ids=tokens,
            visual_tokens={"encoder": g.max_visual, "merged": num, "kept": kept - (seq_len - num)},
            timings_ms=clock.ms,
            prompt_tokens={"text": len(ids) - 1, "prefill": seq_len, "kept": kept},
            segments=self._segments(groups, windows),
            settings={**self.artifact.prune, "mode": self.mode, "backend": f"onnxruntime-{self.backend.device}"},
        )

    def _greedy(self, logits, state, seq_len: int, max_new_tokens: int, on_token) -> list[int]:
        """Greedy tokens; decode step ``j`` is fed at position ``S + j`` (the unpruned length)."""
        presents = spec.present_names(range(self.geometry.num_layers))
        cache = {spec.as_past(n): state[n] for n in presents}
        tokens: list[int] = []
        for j in range(max_new_tokens):
            token = int(np.argmax(logits))
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if token == self.tokenizer.eos_id or j == max_new_tokens - 1:
                break
            out = self.backend.run("decode_step", {"input_id": np.asarray([token], dtype=np.int64),
                                                   "position": np.asarray([seq_len + j], dtype=np.int64), **cache})
            logits = self.backend.host(out["logits"])
            cache = {spec.as_past(n): out[n] for n in presents}
        return tokens

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
