"""The eager PyTorch reference: a video file and a question in, an answer out.

Read top to bottom, this is PruneVid on PLLaVA:

    video file --(PyAV, sampling, CLIP preprocessing)--> pixels [T, 3, S, S]
    pixels --encoder (CLIP layer -2, projector, pooling)--> visual tokens [T, L, C]
    visual tokens --stages A-C (segments, static/dynamic, spatial DPC-KNN)--> merged [M, C]
    prompt ids with the merged tokens at <image> --> embeddings [S, C], S = P + M + Q
    layers 0..K on all S tokens, causal; at layer K the pre-RoPE scoring map
    --> keep index I (all text, top alpha per visual group) ; hidden states and the KV cache of
        layers 0..K gathered with I, original positions kept
    layers K+1.. on the S' kept tokens --> logits of the last position --> first token
    greedy decode, step j at position S + j (the unpruned length) over the pruned caches

It is the oracle for the exported graphs; speed is not its goal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from prunevid.config import PruneConfig
from prunevid.model.llama import KV, LlamaForCausalLM, causal_mask
from prunevid.pruning import (
    MergedVideo,
    merge_video_tokens,
    scoring_attention,
    select_visual_tokens,
)
from prunevid.runtime.report import Answer, Stopwatch


@dataclass(frozen=True)
class VisualInput:
    """Visual tokens entering the LLM and, when merged, their group layout."""

    tokens: torch.Tensor  # [M, C]
    encoder_tokens: int  # T * L before merging
    merged: MergedVideo | None = None


@dataclass
class Prefill:
    """State after the prompt has gone through every layer.

    Attributes:
        logits: ``[V]`` logits of the last prompt position.
        caches: per layer ``(k, v)``, each ``[H_kv, S', d]`` (pruned for every layer).
        seq_len: ``S``, the unpruned prompt length; decode step ``j`` sits at position ``S + j``.
        keep: ``[S']`` kept prompt positions (``arange(S)`` without selection).
        visual_keep: ``[Nv']`` kept visual-relative indices (all of them without selection).
        scores: ``[Nv]`` visual importance at layer K, or ``None`` without selection.
    """

    logits: torch.Tensor
    caches: list[KV]
    seq_len: int
    keep: torch.Tensor
    visual_keep: torch.Tensor
    scores: torch.Tensor | None = None


def merge_visual(features: torch.Tensor, cfg: PruneConfig, noise=None) -> VisualInput:
    """Stages A-C on ``[T, L, C]``, or plain flattening for the baseline."""
    t, n, c = features.shape
    if not cfg.merges:
        return VisualInput(features.reshape(t * n, c), t * n)  # [T*L, C], frame-major
    merged = merge_video_tokens(
        features,
        tau=cfg.tau,
        temporal_segment_ratio=cfg.temporal_segment_ratio,
        cluster_ratio=cfg.cluster_ratio,
        temporal_k=cfg.temporal_k,
        spatial_k=cfg.spatial_k,
        noise=noise,
    )
    return VisualInput(merged.tokens, t * n, merged)


def splice(embeds: torch.Tensor, image_pos: int, visual: torch.Tensor) -> torch.Tensor:
    """Replace the placeholder row ``image_pos`` of ``[P+1+Q, C]`` by ``visual [M, C]``."""
    return torch.cat([embeds[:image_pos], visual, embeds[image_pos + 1 :]], dim=0)  # [P+M+Q, C]


def question_scores(q: torch.Tensor, k: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """``[Nv]`` importance from layer-K pre-RoPE ``q, k``, using only the query rows after the
    visual block (each still normalised over all ``S`` keys): equal to
    ``visual_token_scores(scoring_attention(q, k), start, end)`` at a fraction of the memory."""
    attn = scoring_attention(q[:, end:], k)  # [H, Q, S]
    return attn[:, :, start:end].amax(dim=0).amax(dim=0)  # [Nv]


def prefill(
    lm: LlamaForCausalLM, x: torch.Tensor, visual_span: tuple[int, int], visual: VisualInput, cfg: PruneConfig
) -> Prefill:
    """Run the prompt ``x [S, C]`` through the decoder with PruneVid's selection after layer K."""
    s = x.shape[0]
    start, end = visual_span
    positions = torch.arange(s)
    num_layers = len(lm.model.layers)
    if not cfg.selects:
        x, caches = lm.run_layers(x, range(num_layers), positions, causal_mask(s))
        return Prefill(lm.logits(x[-1:])[0], caches, s, positions, torch.arange(end - start))

    k_layer = cfg.layer
    rope, mask = lm.rope(positions), causal_mask(s)
    caches: list[KV] = []
    for i in range(k_layer + 1):
        out = lm.model.layers[i](x, rope, mask, keep_pre_rope=i == k_layer)
        x = out.hidden
        caches.append(out.kv)
    scores = question_scores(out.q_pre_rope, out.k_pre_rope, start, end)  # [Nv]
    m = visual.merged
    visual_keep = select_visual_tokens(scores, m.static_sizes, m.dynamic_sizes, m.window_sizes, cfg.alpha)
    keep = torch.cat([torch.arange(start), start + visual_keep, torch.arange(end, s)])  # [S']
    x = x[keep]  # [S', C]
    caches = [(kc[:, keep], vc[:, keep]) for kc, vc in caches]  # each [H_kv, S', d]
    x, late = lm.run_layers(x, range(k_layer + 1, num_layers), positions[keep], causal_mask(len(keep)))
    return Prefill(lm.logits(x[-1:])[0], caches + late, s, keep, visual_keep, scores)


def decode_step(lm: LlamaForCausalLM, embed: Callable, token: int, position: int, caches: list[KV]):
    """One token at ``position`` over every layer's cache; returns ``(logits [V], caches)``."""
    x = embed(torch.tensor([token]))  # [1, C]
    x, caches = lm.run_layers(x, range(len(caches)), torch.tensor([position]), None, past=caches)
    return lm.logits(x)[0], caches


def greedy(
    lm: LlamaForCausalLM, embed: Callable, state: Prefill, max_new_tokens: int, eos_id: int | None
) -> Iterator[int]:
    """Greedy tokens after the prompt; step ``j`` is fed at position ``S + j``. Stops after EOS."""
    logits, caches = state.logits, state.caches
    for j in range(max_new_tokens):
        token = int(torch.argmax(logits))
        yield token
        if token == eos_id or j == max_new_tokens - 1:
            return
        logits, caches = decode_step(lm, embed, token, state.seq_len + j, caches)


class EagerPipeline:
    """The eager reference behind ``prunevid run --model-dir``. Load once, answer many times."""

    def __init__(self, model_dir: str | Path, cfg: PruneConfig):
        from prunevid.model.checkpoint import load_model
        from prunevid.model.config import FAMILIES
        from prunevid.runtime.text import TextTokenizer
        from prunevid.runtime.video import Preprocess

        self.model_dir = Path(model_dir)
        self.model, self.model_cfg = load_model(self.model_dir, cfg.lora_alpha)
        self.cfg = cfg.with_frames_from(self.model_cfg.num_frames).validate(self.model_cfg.text.num_hidden_layers)
        self.tokenizer = TextTokenizer.from_dir(self.model_dir)
        self.preprocess = Preprocess.from_json(self.model_dir / "preprocessor_config.json", self.model_cfg.vision.image_size,
                                               FAMILIES[self.model_cfg.family].preprocessor_defaults)
        self.last_trace: dict = {}  # hook for prunevid.explain: merging and selection of the last run

    def load_pixels(self, video: str | Path) -> torch.Tensor:
        from prunevid.runtime.video import load_video

        return torch.from_numpy(load_video(video, self.cfg.frames, self.preprocess))  # [T, 3, S, S]

    @property
    def default_template(self) -> str:
        """The model family's conversation template."""
        from prunevid.model.config import FAMILIES

        return FAMILIES[self.model_cfg.family].template

    def prompt(self, question: str, template: str | None):
        from prunevid.runtime.text import build_prompt

        return build_prompt(self.tokenizer, question, template or self.default_template,
                            self.model_cfg.placeholder_index, self.model_cfg.after_visual_ids)

    @torch.inference_mode()
    def run(self, video: str | Path, question: str, *, max_new_tokens: int = 64, template: str | None = None) -> Answer:
        from prunevid.runtime.text import check_fits

        prompt = self.prompt(question, template)  # validate the question before any heavy work
        if not self.cfg.merges:  # the baseline's visual token count is known before decoding
            check_fits(len(prompt.ids), self.cfg.frames * self.model_cfg.tokens_per_frame, max_new_tokens,
                       self.model_cfg.text.max_position_embeddings)
        clock = Stopwatch()
        with clock.stage("video"):
            pixels = self.load_pixels(video)
        with clock.stage("encoder"):
            features = self.model.encode(pixels)  # [T, L, C]
        with clock.stage("merge"):
            visual = merge_visual(features, self.cfg)
        m = visual.tokens.shape[0]
        check_fits(len(prompt.ids), m, max_new_tokens, self.model_cfg.text.max_position_embeddings)
        with clock.stage("prefill"):
            embeds = splice(self.model.embed(torch.tensor(prompt.ids)), prompt.image_pos, visual.tokens)
            state = prefill(self.model.language_model, embeds, (prompt.image_pos, prompt.image_pos + m), visual, self.cfg)
        with clock.stage("decode"):
            tokens = list(greedy(self.model.language_model, self.model.embed, state, max_new_tokens, self.tokenizer.eos_id))
        self.last_trace = {"frames": int(pixels.shape[0]), "merged": visual.merged, "visual_keep": state.visual_keep}
        return self._answer(tokens, visual, state, clock, len(prompt.ids))

    def _answer(self, tokens, visual: VisualInput, state: Prefill, clock: Stopwatch, prompt_len: int) -> Answer:
        m = visual.tokens.shape[0]
        merged = visual.merged
        segments = {}
        if merged is not None:
            segments = {"window_sizes": merged.window_sizes, "static_sizes": merged.static_sizes,
                        "dynamic_sizes": merged.dynamic_sizes}
        return Answer(
            answer=self.tokenizer.decode(tokens),
            token_ids=tokens,
            visual_tokens={"encoder": visual.encoder_tokens, "merged": m, "kept": int(state.visual_keep.numel())},
            timings_ms=clock.ms,
            prompt_tokens={"text": prompt_len - 1, "prefill": state.seq_len, "kept": int(state.keep.numel())},
            segments=segments,
            settings=self.cfg.to_json(),
        )
