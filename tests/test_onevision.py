"""LLaVA-OneVision as the second family: config parsing, transformers parity, preprocessing parity,
PruneVid's two-stage prefill against a masked full-length forward, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from prunevid.config import Mode, PruneConfig
from prunevid.errors import ConfigError, ModelDirError

QUESTION = "What is the man doing in the video?"


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random LLaVA-OneVision (16 frames of 7x7 SigLIP patches -> 4x4 tokens)."""
    from prunevid.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("ov") / "tiny-ov", model="llava-onevision")


@pytest.fixture(scope="module")
def ov_model(ov_dir):
    from prunevid.model.checkpoint import load_model

    return load_model(ov_dir)


def _prompt(model_dir: Path, cfg, question: str = QUESTION, template: str = "ov-chat"):
    from prunevid.runtime.text import TextTokenizer, build_prompt

    return build_prompt(TextTokenizer.from_dir(model_dir), question, template, cfg.placeholder_index,
                        cfg.after_visual_ids)


def _pixels(model_dir: Path, cfg, clip: Path, frames: int | None = None) -> torch.Tensor:
    from prunevid.runtime.video import Preprocess, load_video

    pp = Preprocess.from_json(model_dir / "preprocessor_config.json", cfg.vision.image_size)
    return torch.from_numpy(load_video(clip, frames or cfg.num_frames, pp))  # [T, 3, S, S]


def _clip(real_clips, scene_cut_clip, name: str = "bikes") -> Path:
    return real_clips.get(name, scene_cut_clip)


# ---------------------------------------------------------------- config as data


def test_config_parses_llava_hf_layout(ov_model) -> None:
    _, cfg = ov_model
    assert cfg.family == "llava-onevision"
    assert cfg.vision.model_type == "siglip_vision_model" and cfg.vision.hidden_act == "gelu_pytorch_tanh"
    assert cfg.text.model_type == "qwen2" and cfg.text.qkv_bias and not cfg.text.attention_bias
    assert (cfg.text.num_attention_heads, cfg.text.kv_heads) == (4, 2)
    assert cfg.text.rope_theta == 1e6
    assert cfg.vision_feature_layer == -1 and cfg.vision_feature_select_strategy == "full"
    assert cfg.pooling_shape == (16, 4, 4)  # ceil(7 / 2) = 4
    assert cfg.placeholder_index == cfg.video_token_index != cfg.image_token_index
    assert cfg.after_visual_ids == (cfg.text.vocab_size,)


def test_config_defaults_are_the_transformers_ones() -> None:
    """A config.json that leaves every optional field out gets LlavaOnevisionConfig's defaults
    (SigLIP so400m at 26 layers, Qwen2, 32 frames of 27 x 27 -> 14 x 14)."""
    from prunevid.model.config import parse_config

    cfg = parse_config({"architectures": ["LlavaOnevisionForConditionalGeneration"], "model_type": "llava_onevision",
                        "vision_config": {"model_type": "siglip_vision_model"},
                        "text_config": {"model_type": "qwen2", "vocab_size": 152128, "hidden_size": 3584,
                                        "intermediate_size": 18944, "num_hidden_layers": 28,
                                        "num_attention_heads": 28, "num_key_value_heads": 4,
                                        "rope_theta": 1000000.0}})
    assert (cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.image_size) == (1152, 26, 384)
    assert cfg.pooling_shape == (32, 14, 14) and cfg.tokens_per_frame == 196
    assert (cfg.image_token_index, cfg.video_token_index) == (151646, 151647)
    assert cfg.text.dim_per_head == 128 and cfg.text.kv_heads == 4 and cfg.text.qkv_bias
    assert cfg.num_frames * cfg.tokens_per_frame + len(cfg.after_visual_ids) == 6273


# ---------------------------------------------------------------- parity with transformers


@pytest.fixture(scope="module")
def hf_model(ov_dir):
    transformers = pytest.importorskip("transformers")
    model, info = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
        ov_dir, output_loading_info=True, dtype=torch.float32)
    return model.eval(), info


def test_transformers_loads_tiny_without_missing_or_unexpected_keys(hf_model) -> None:
    _, info = hf_model
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def _hf_ids(prompt, cfg, visual_rows: int) -> list[int]:
    """transformers' input: the <video> token repeated once per visual row and the newline."""
    pos = prompt.image_pos
    return prompt.ids[:pos] + [cfg.video_token_index] * (visual_rows + 1) + prompt.ids[pos + 2:]


def test_unpruned_logits_and_greedy_ids_equal_transformers(ov_dir, ov_model, hf_model, real_clips,
                                                          scene_cut_clip) -> None:
    from prunevid.model.llama import causal_mask
    from prunevid.reference import VisualInput, greedy, prefill, splice

    model, cfg = ov_model
    hf, _ = hf_model
    pixels = _pixels(ov_dir, cfg, _clip(real_clips, scene_cut_clip, "bikes"))
    prompt = _prompt(ov_dir, cfg)
    with torch.inference_mode():
        features = model.encode(pixels)  # [T, L, C]
        t, l, c = features.shape
        visual = features.reshape(t * l, c)
        x = splice(model.embed(torch.tensor(prompt.ids)), prompt.image_pos, visual)
        s = x.shape[0]
        hidden, _ = model.language_model.run_layers(x, range(cfg.text.num_hidden_layers), torch.arange(s),
                                                    causal_mask(s))
        ours = model.language_model.logits(hidden)  # [S, V]
        ids = torch.tensor([_hf_ids(prompt, cfg, t * l)])
        theirs = hf(input_ids=ids, pixel_values_videos=pixels[None]).logits[0]  # [S, V]
        assert ours.shape == theirs.shape == (len(prompt.ids) - 1 + t * l, cfg.text.vocab_size)
        assert (ours - theirs).abs().max().item() <= 1e-4
        state = prefill(model.language_model, x, (prompt.image_pos, prompt.image_pos + t * l),
                        VisualInput(visual, t * l), PruneConfig(mode=Mode.NONE))
        mine = list(greedy(model.language_model, model.embed, state, 10, None))
        generated = hf.generate(input_ids=ids, pixel_values_videos=pixels[None], max_new_tokens=10,
                                min_new_tokens=10, do_sample=False)
    assert mine == generated[0, ids.shape[1]:].tolist()


def test_eager_pipeline_unpruned_answers_as_transformers(ov_dir, ov_model, hf_model, real_clips, scene_cut_clip) -> None:
    """The eager reference end to end (video file, template, newline row) generates transformers'
    greedy ids, EOS included."""
    from prunevid.reference import EagerPipeline

    _, cfg = ov_model
    hf, _ = hf_model
    clip = _clip(real_clips, scene_cut_clip, "carphone_pristine")
    answer = EagerPipeline(ov_dir, PruneConfig(mode=Mode.NONE)).run(clip, QUESTION, max_new_tokens=8)
    prompt = _prompt(ov_dir, cfg)
    ids = torch.tensor([_hf_ids(prompt, cfg, cfg.num_frames * cfg.tokens_per_frame)])
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, pixel_values_videos=_pixels(ov_dir, cfg, clip)[None], max_new_tokens=8,
                          do_sample=False, eos_token_id=None)
    assert answer.token_ids == out[0, ids.shape[1]:].tolist()[: len(answer.token_ids)]
    assert answer.visual_tokens["encoder"] == cfg.num_frames * cfg.tokens_per_frame


@pytest.mark.parametrize("name", ["bigbuckbunny", "bikes", "carphone_distorted", "carphone_pristine"])
def test_preprocessing_equals_transformers_siglip(real_clips, name: str) -> None:
    """OneVision's video preprocessing (square bicubic resize to 384, mean/std 0.5) equals
    transformers' SigLIP image processor frame by frame on the real clips. (transformers'
    LlavaOnevisionVideoProcessor needs torchvision, which does not import beside the CPU torch.)"""
    module = pytest.importorskip("transformers.models.siglip.image_processing_pil_siglip")
    from prunevid.model.tiny import _onevision_preprocessor
    from prunevid.runtime.video import Preprocess, preprocess_frames, read_frames

    if name not in real_clips:
        pytest.skip(f"{name} not bundled")
    frames = read_frames(real_clips[name], 4)
    pp = Preprocess._from_dict(_onevision_preprocessor(384))
    processor = module.SiglipImageProcessorPil(size={"height": 384, "width": 384}, resample=3,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ref = np.asarray(processor(list(frames), return_tensors="np", input_data_format="channels_last")["pixel_values"])
    ours = preprocess_frames(frames, pp)
    assert ours.shape == ref.shape == (4, 3, 384, 384)
    assert np.abs(ours - ref).max() <= 1e-5
