"""The eager reference against two oracles.

* Pruning off: transformers' own ``LlavaForConditionalGeneration`` on the same tiny checkpoint,
  with PLLaVA's ``adaptive_avg_pool3d`` applied to its video features, within 1e-4 (float32).
* Pruning on: an independent computation of the same thing: one full-length forward in which the
  layers after K, and every decode step, see an attention mask that hides the pruned tokens, at
  the original positions; nothing is gathered there.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from prunevid.config import Mode, PruneConfig
from prunevid.model.checkpoint import load_checkpoint
from prunevid.model.llama import causal_mask
from prunevid.reference import EagerPipeline, greedy, merge_visual, prefill, splice

QUESTION = "What is happening in this video, and who is moving?"
HF_TOL = 1e-4
MASK_TOL = 2e-5


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    return EagerPipeline(tiny_model_dir, PruneConfig())


@pytest.fixture(scope="module")
def pixels(pipeline, real_clips, scene_cut_clip):
    clip = real_clips.get("bikes", scene_cut_clip)
    return pipeline.load_pixels(clip)


@pytest.fixture(scope="module")
def prompt(pipeline):
    return pipeline.prompt(QUESTION, "vcg")


def inputs(pipeline, pixels, prompt, cfg):
    with torch.inference_mode():
        visual = merge_visual(pipeline.model.encode(pixels), cfg)
        embeds = splice(pipeline.model.embed(torch.tensor(prompt.ids)), prompt.image_pos, visual.tokens)
    span = (prompt.image_pos, prompt.image_pos + visual.tokens.shape[0])
    return visual, embeds, span


# ---------------------------------------------------------------- transformers as the oracle


def hf_model(model_dir):
    transformers = pytest.importorskip("transformers")
    raw = json.loads((model_dir / "config.json").read_text())
    cfg = transformers.LlavaConfig(**{k: v for k, v in raw.items() if k != "architectures"})
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    renames = (
        ("vision_tower.vision_model.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
    )
    state = {}
    for key, value in load_checkpoint(model_dir).state_dict.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    return model


def hf_video_tokens(hf, pixels, pooled_hw):
    """transformers' tower and projector, then PLLaVA's own 3-D adaptive pooling."""
    hidden = hf.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    feats = hf.model.multi_modal_projector(hidden)  # [T, g*g, C]
    t, n, c = feats.shape
    g = int(n**0.5)
    video = feats.view(1, t, g, g, c).permute(0, 4, 1, 2, 3)  # [1, C, T, g, g]
    pooled = F.adaptive_avg_pool3d(video, (t, *pooled_hw))  # [1, C, T, h, w]
    return pooled.permute(0, 2, 3, 4, 1).reshape(-1, c)  # [T*h*w, C], (t, h, w) order


def hf_logits(hf, embeds):
    out = hf.model.language_model(inputs_embeds=embeds[None], position_ids=torch.arange(embeds.shape[0])[None])
    return hf.lm_head(out.last_hidden_state)[0]  # [S, V]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return hf_model(tiny_model_dir)


def test_unpruned_reference_matches_transformers(pipeline, hf, pixels, prompt):
    cfg = PruneConfig(mode=Mode.NONE)
    visual, embeds, span = inputs(pipeline, pixels, prompt, cfg)
    lm = pipeline.model.language_model
    with torch.inference_mode():
        hf_tokens = hf_video_tokens(hf, pixels, pipeline.model_cfg.pooling_shape[1:])
        assert (visual.tokens - hf_tokens).abs().max() <= HF_TOL
        hf_embeds = splice(hf.get_input_embeddings()(torch.tensor(prompt.ids)), prompt.image_pos, hf_tokens)
        expected = hf_logits(hf, hf_embeds)
        x, _ = lm.run_layers(embeds, range(len(lm.model.layers)), torch.arange(embeds.shape[0]), causal_mask(embeds.shape[0]))
        ours = lm.logits(x)
        state = prefill(lm, embeds, span, visual, cfg)
    assert (ours - expected).abs().max() <= HF_TOL
    assert (state.logits - expected[-1]).abs().max() <= HF_TOL


def test_unpruned_greedy_decoding_matches_transformers(pipeline, hf, pixels, prompt):
    """Our cached decode loop against transformers re-running the whole growing sequence."""
    cfg = PruneConfig(mode=Mode.NONE)
    visual, embeds, span = inputs(pipeline, pixels, prompt, cfg)
    lm, embed = pipeline.model.language_model, pipeline.model.embed
    with torch.inference_mode():
        state = prefill(lm, embeds, span, visual, cfg)
        ours = list(greedy(lm, embed, state, 6, eos_id=None))
        seq, theirs = embeds, []
        for _ in range(6):
            token = int(hf_logits(hf, seq)[-1].argmax())
            theirs.append(token)
            seq = torch.cat([seq, hf.get_input_embeddings()(torch.tensor([token]))])
    assert ours == theirs


# ---------------------------------------------------------------- masked full-length oracle


def masked_prefill(lm, x, keep, k_layer):
    """Every layer on all S tokens at positions 0..S-1; layers after K cannot see pruned keys."""
    s = x.shape[0]
    rope = lm.rope(torch.arange(s))
    hide = torch.full((s,), float("-inf"))
    hide[keep] = 0.0
    early, late = causal_mask(s), causal_mask(s) + hide[None, :]
    caches = []
    for i, layer in enumerate(lm.model.layers):
        out = layer(x, rope, early if i <= k_layer else late)
        x = out.hidden
        caches.append(out.kv)
    return lm.logits(x[-1:])[0], caches, hide


def masked_greedy(lm, embed, logits, caches, hide, steps):
    """Greedy decoding over full-length caches with the pruned keys hidden in every layer."""
    s = hide.shape[0]
    tokens = []
    for j in range(steps):
        token = int(logits.argmax())
        tokens.append(token)
        key_mask = torch.cat([hide, torch.zeros(j + 1)])[None, :]  # [1, S + j + 1]
        x = embed(torch.tensor([token]))
        rope = lm.rope(torch.tensor([s + j]))
        new = []
        for layer, cache in zip(lm.model.layers, caches):
            out = layer(x, rope, key_mask, past=cache)
            x = out.hidden
            new.append(out.kv)
        logits, caches = lm.logits(x)[0], new
    return tokens, logits


@pytest.fixture(scope="module")
def pruned(pipeline, pixels, prompt):
    cfg = PruneConfig()
    visual, embeds, span = inputs(pipeline, pixels, prompt, cfg)
    with torch.inference_mode():
        state = prefill(pipeline.model.language_model, embeds, span, visual, cfg)
    return cfg, visual, embeds, span, state


def test_selection_really_prunes(pruned):
    cfg, visual, embeds, span, state = pruned
    s, m = embeds.shape[0], visual.tokens.shape[0]
    assert 0 < state.visual_keep.numel() < m
    assert state.keep.numel() == s - m + state.visual_keep.numel()
    # every text token is kept, before and after the visual block
    assert state.keep[: span[0]].tolist() == list(range(span[0]))
    assert state.keep[-(s - span[1]):].tolist() == list(range(span[1], s))
    assert torch.all(state.keep[1:] > state.keep[:-1])


def test_two_stage_prefill_equals_masked_full_forward(pipeline, pruned):
    cfg, visual, embeds, span, state = pruned
    lm = pipeline.model.language_model
    with torch.inference_mode():
        logits, caches, _ = masked_prefill(lm, embeds, state.keep, cfg.layer)
    assert (state.logits - logits).abs().max() <= MASK_TOL
    # KV of layers 0..K gathered with the keep index; every layer holds S' entries
    for i, ((k2, v2), (kf, vf)) in enumerate(zip(state.caches, caches)):
        assert k2.shape[1] == state.keep.numel()
        tol = 0.0 if i <= cfg.layer else MASK_TOL
        assert (k2 - kf[:, state.keep]).abs().max() <= tol
        assert (v2 - vf[:, state.keep]).abs().max() <= tol


def test_decoding_continues_at_unpruned_length(pipeline, pruned):
    cfg, visual, embeds, span, state = pruned
    lm, embed = pipeline.model.language_model, pipeline.model.embed
    steps = 6
    with torch.inference_mode():
        ours = list(greedy(lm, embed, state, steps, eos_id=None))
        logits, caches, hide = masked_prefill(lm, embeds, state.keep, cfg.layer)
        theirs, _ = masked_greedy(lm, embed, logits, caches, hide, steps)
    assert state.seq_len == embeds.shape[0]
    assert ours == theirs


def test_oracle_detects_renumbered_positions(pipeline, pruned):
    """Compacting the kept positions (a different model) must break the equality above."""
    cfg, visual, embeds, span, state = pruned
    lm = pipeline.model.language_model
    with torch.inference_mode():
        x, _ = lm.run_layers(embeds, range(cfg.layer + 1), torch.arange(embeds.shape[0]), causal_mask(embeds.shape[0]))
        n = state.keep.numel()
        x, _ = lm.run_layers(x[state.keep], range(cfg.layer + 1, len(lm.model.layers)), torch.arange(n), causal_mask(n))
        compacted = lm.logits(x[-1:])[0]
        masked, _, _ = masked_prefill(lm, embeds, state.keep, cfg.layer)
    assert (compacted - masked).abs().max() > 20 * MASK_TOL


def test_merge_only_keeps_every_merged_token(pipeline, pixels, prompt):
    cfg = PruneConfig(mode=Mode.MERGE)
    visual, embeds, span = inputs(pipeline, pixels, prompt, cfg)
    lm = pipeline.model.language_model
    with torch.inference_mode():
        state = prefill(lm, embeds, span, visual, cfg)
        x, _ = lm.run_layers(embeds, range(len(lm.model.layers)), torch.arange(embeds.shape[0]), causal_mask(embeds.shape[0]))
    assert state.keep.numel() == embeds.shape[0]
    assert torch.equal(state.logits, lm.logits(x[-1:])[0])
    assert visual.tokens.shape[0] < visual.encoder_tokens


def test_lora_alpha_changes_the_merged_weights(tiny_model_dir):
    a = load_checkpoint(tiny_model_dir, lora_alpha=4.0).state_dict
    b = load_checkpoint(tiny_model_dir, lora_alpha=14.0).state_dict
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[key], b[key])
    assert torch.equal(a["language_model.model.layers.0.self_attn.k_proj.weight"],
                       b["language_model.model.layers.0.self_attn.k_proj.weight"])
    assert not any("lora" in k or "base_layer" in k for k in a)
