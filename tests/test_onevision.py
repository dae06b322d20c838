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


def _pixels(model_dir: Path, cfg, clip: Path) -> torch.Tensor:
    from prunevid.runtime.video import Preprocess, load_video

    pp = Preprocess.from_json(model_dir / "preprocessor_config.json", cfg.vision.image_size)
    return torch.from_numpy(load_video(clip, cfg.num_frames, pp))  # [T, 3, S, S]


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


# transformers >= 5 saves LlavaOnevisionForConditionalGeneration under these names (legacy -> new)
_TRANSFORMERS5_PREFIXES = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                           ("vision_tower.", "model.vision_tower."),
                           ("multi_modal_projector.", "model.multi_modal_projector."),
                           ("image_newline", "model.image_newline"))


def _rename_to_transformers5(folder: Path) -> None:
    from safetensors.torch import save_file

    from prunevid.model.checkpoint import read_tensors, weight_files

    files = weight_files(folder)
    state = {}
    for key, value in read_tensors(files):
        old, new = next((o, n) for o, n in _TRANSFORMERS5_PREFIXES if key.startswith(o))
        state[new + key[len(old):]] = value
    for f in [*files, folder / "model.safetensors.index.json"]:
        f.unlink(missing_ok=True)
    save_file(state, str(folder / "model.safetensors"))


def test_transformers5_key_names_load_as_the_legacy_ones(ov_dir, ov_model, tmp_path) -> None:
    """A OneVision checkpoint saved with transformers-5 names (model.image_newline,
    model.language_model.*, lm_head.*) loads into the same weights as the legacy-named one."""
    from safetensors import safe_open

    from prunevid.model.checkpoint import load_model

    folder = _broken_copy(ov_dir, tmp_path, _rename_to_transformers5)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.image_newline" in keys and "image_newline" not in keys
    assert any(k.startswith("model.language_model.layers.") for k in keys) and "lm_head.weight" in keys
    legacy, _ = ov_model
    renamed, cfg = load_model(folder)
    assert cfg.family == "llava-onevision"
    ours, theirs = renamed.state_dict(), legacy.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


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
    model, cfg = ov_model
    hf, _ = hf_model
    _assert_unpruned_equals_transformers(ov_dir, model, cfg, hf, _clip(real_clips, scene_cut_clip, "bikes"))


def _assert_unpruned_equals_transformers(model_dir: Path, model, cfg, hf, clip: Path) -> None:
    """Full-length logits within 1e-4 of transformers' and the same 10 greedy ids, on ``clip``."""
    from prunevid.model.llama import causal_mask
    from prunevid.reference import VisualInput, greedy, prefill, splice

    pixels = _pixels(model_dir, cfg, clip)
    prompt = _prompt(model_dir, cfg)
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


@pytest.fixture(scope="module")
def ov_off_grid_dir(ov_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny OneVision at 104 px: 104 = 7 x 14 + 6, not a multiple of the patch size, as the real
    384 = 27 x 14 + 6. The patch convolution drops the last 6 px, so the grid (7 x 7), the position
    table and every weight are those of the 98 px model; only config.json and the preprocessor change."""
    folder = tmp_path_factory.mktemp("ov104") / "tiny-ov-104"
    shutil.copytree(ov_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["image_size"] = 104
    (folder / "config.json").write_text(json.dumps(config))
    _edit_json(folder / "preprocessor_config.json", size={"height": 104, "width": 104})
    return folder


def test_image_size_off_the_patch_grid_equals_transformers(ov_off_grid_dir, real_clips, scene_cut_clip) -> None:
    """At an image size that is not a multiple of the patch size: the same 7 x 7 grid as transformers
    (image_size // patch_size), the same logits and greedy ids, and the preprocessing (a square
    resize to 104 px, not to a multiple of 14) equals transformers' SigLIP image processor."""
    transformers = pytest.importorskip("transformers")
    from prunevid.model.checkpoint import load_model
    from prunevid.runtime.video import Preprocess

    model, cfg = load_model(ov_off_grid_dir)
    assert (cfg.vision.image_size, cfg.vision.grid, cfg.pooling_shape) == (104, 7, (16, 4, 4))
    hf, info = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
        ov_off_grid_dir, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    clip = _clip(real_clips, scene_cut_clip, "bikes")
    _assert_unpruned_equals_transformers(ov_off_grid_dir, model, cfg, hf.eval(), clip)
    _assert_preprocessing_equals_siglip(clip, Preprocess.from_json(ov_off_grid_dir / "preprocessor_config.json", 104),
                                        104)


def _assert_preprocessing_equals_siglip(clip: Path, pp, size: int) -> None:
    """Four frames of ``clip`` through ``pp`` equal transformers' SigLIP image processor at ``size``
    (square bicubic resize, mean/std 0.5) within 1e-5."""
    module = pytest.importorskip("transformers.models.siglip.image_processing_pil_siglip")
    from prunevid.runtime.video import preprocess_frames, read_frames

    frames = read_frames(clip, 4)
    processor = module.SiglipImageProcessorPil(size={"height": size, "width": size}, resample=3,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ref = np.asarray(processor(list(frames), return_tensors="np", input_data_format="channels_last")["pixel_values"])
    ours = preprocess_frames(frames, pp)
    assert ours.shape == ref.shape == (4, 3, size, size)
    assert np.abs(ours - ref).max() <= 1e-5


def test_eager_pipeline_unpruned_answers_as_transformers(ov_dir, ov_model, hf_model, real_clips, scene_cut_clip) -> None:
    """The eager reference end to end (video file, template, newline row) generates transformers'
    greedy ids, EOS included."""
    from prunevid.reference import EagerPipeline

    _, cfg = ov_model
    hf, _ = hf_model
    clip = _clip(real_clips, scene_cut_clip, "carphone_pristine")
    pipeline = EagerPipeline(ov_dir, PruneConfig(mode=Mode.NONE))
    answer = pipeline.run(clip, QUESTION, max_new_tokens=8)
    # not vacuous: all 8 tokens, or fewer ending in the first EOS
    eos = pipeline.tokenizer.eos_id
    assert len(answer.token_ids) == 8 or (answer.token_ids and answer.token_ids[-1] == eos)
    assert eos not in answer.token_ids[:-1]
    prompt = _prompt(ov_dir, cfg)
    ids = torch.tensor([_hf_ids(prompt, cfg, cfg.num_frames * cfg.tokens_per_frame)])
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, pixel_values_videos=_pixels(ov_dir, cfg, clip)[None], max_new_tokens=8,
                          do_sample=False, eos_token_id=None)
    assert answer.token_ids == out[0, ids.shape[1]:].tolist()[: len(answer.token_ids)]
    assert answer.visual_tokens["encoder"] == cfg.num_frames * cfg.tokens_per_frame


def _hub_preprocessor(size: int) -> dict:
    """``preprocessor_config.json`` as the llava-hf OneVision repositories ship it (the image
    processor's: no ``do_center_crop`` nor ``crop_size``, anyres padding and grid pinpoints), at ``size``."""
    return {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
            "image_grid_pinpoints": [[size * h, size * w] for h in range(1, 4) for w in range(1, 4)],
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "LlavaOnevisionImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "processor_class": "LlavaOnevisionProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"height": size, "width": size}}


def test_hub_preprocessor_config_loads_exports_and_equals_transformers(ov_dir, ov_model, tmp_path, real_clips,
                                                                       scene_cut_clip) -> None:
    """A OneVision folder with the hub's preprocessor config (crop not named: the family's default, off)
    runs eagerly and exports; both read it as transformers' LlavaOnevisionImageProcessor (its first
    anyres patch, the whole frame resized to the square) on real frames."""
    module = pytest.importorskip("transformers.models.llava_onevision.image_processing_pil_llava_onevision")
    from prunevid.exporter.export import ExportOptions, export
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.pipeline import RuntimePipeline
    from prunevid.runtime.video import preprocess_frames, read_frames

    _, cfg = ov_model
    size = cfg.vision.image_size
    folder = _broken_copy(ov_dir, tmp_path, lambda f: (f / "preprocessor_config.json").write_text(
        json.dumps(_hub_preprocessor(size))))
    eager = EagerPipeline(folder, PruneConfig())
    out = export(folder, tmp_path / "export", PruneConfig(), ExportOptions())
    runtime = RuntimePipeline(out)
    assert not eager.preprocess.do_center_crop and eager.preprocess == runtime.preprocess
    processor = module.LlavaOnevisionImageProcessorPil.from_pretrained(folder)
    frames = read_frames(_clip(real_clips, scene_cut_clip, "bikes"), 4)
    ref = np.asarray(processor(list(frames), return_tensors="np", input_data_format="channels_last")["pixel_values"])
    assert ref.shape[0] == 4 and ref.shape[1] > 1 and ref.shape[2:] == (3, size, size)  # whole frame + anyres patches
    for pp in (eager.preprocess, runtime.preprocess):
        ours = preprocess_frames(frames, pp)
        assert ours.shape == (4, 3, size, size)
        assert np.abs(ours - ref[:, 0]).max() <= 1e-6
    pixels = runtime.prepare(_clip(real_clips, scene_cut_clip, "bikes"))
    assert np.array_equal(pixels, eager.load_pixels(_clip(real_clips, scene_cut_clip, "bikes")).numpy())


def test_a_missing_center_crop_still_means_crop_for_pllava(tiny_model_dir, tmp_path) -> None:
    """The family default is OneVision's alone: PLLaVA's CLIPImageProcessor crops when the key is absent."""
    from prunevid.reference import EagerPipeline

    folder = tmp_path / "pllava"
    shutil.copytree(tiny_model_dir, folder)
    data = json.loads((folder / "preprocessor_config.json").read_text())
    data.pop("do_center_crop")
    (folder / "preprocessor_config.json").write_text(json.dumps(data))
    assert EagerPipeline(folder, PruneConfig()).preprocess.do_center_crop


@pytest.mark.parametrize("name", ["bigbuckbunny", "bikes", "carphone_distorted", "carphone_pristine"])
def test_preprocessing_equals_transformers_siglip(real_clips, name: str) -> None:
    """OneVision's video preprocessing (square bicubic resize to 384, mean/std 0.5) equals
    transformers' SigLIP image processor frame by frame on the real clips. (transformers'
    LlavaOnevisionVideoProcessor needs torchvision, which is not installed here.)"""
    from prunevid.model.tiny import _onevision_preprocessor
    from prunevid.runtime.video import Preprocess

    if name not in real_clips:
        pytest.skip(f"{name} not bundled")
    _assert_preprocessing_equals_siglip(real_clips[name], Preprocess._from_dict(_onevision_preprocessor(384)), 384)


# ---------------------------------------------------------------- PruneVid on OneVision


@pytest.fixture(scope="module")
def ov_pipeline(ov_dir):
    from prunevid.reference import EagerPipeline

    return EagerPipeline(ov_dir, PruneConfig())


@pytest.fixture(scope="module")
def ov_pruned(ov_pipeline, real_clips, scene_cut_clip):
    from test_reference import inputs

    from prunevid.reference import prefill

    cfg = PruneConfig()
    pixels = ov_pipeline.load_pixels(_clip(real_clips, scene_cut_clip, "bikes"))
    prompt = ov_pipeline.prompt(QUESTION, None)
    visual, embeds, span = inputs(ov_pipeline, pixels, prompt, cfg)
    with torch.inference_mode():
        state = prefill(ov_pipeline.model.language_model, embeds, span, visual, cfg)
    return cfg, visual, embeds, span, state


def test_newline_row_follows_the_merged_tokens_and_is_kept(ov_pipeline, ov_pruned) -> None:
    cfg, visual, embeds, span, state = ov_pruned
    model = ov_pipeline.model
    assert visual.merged is not None and visual.tokens.shape[0] < visual.encoder_tokens
    assert torch.equal(embeds[span[1]], model.image_newline.detach())  # right after the M merged rows
    assert span[1] in state.keep.tolist()  # kept like text
    assert 0 < state.visual_keep.numel() < visual.tokens.shape[0]
    assert state.keep.numel() == embeds.shape[0] - visual.tokens.shape[0] + state.visual_keep.numel()


def test_pruned_two_stage_prefill_equals_masked_full_forward_with_gqa(ov_pipeline, ov_pruned) -> None:
    """As for PLLaVA (tests/test_reference.py), on a decoder with 4 query / 2 key-value heads."""
    from test_reference import MASK_TOL, masked_greedy, masked_prefill

    from prunevid.reference import greedy

    cfg, visual, embeds, span, state = ov_pruned
    lm, embed = ov_pipeline.model.language_model, ov_pipeline.model.embed
    assert lm.cfg.kv_heads < lm.cfg.num_attention_heads
    with torch.inference_mode():
        logits, caches, hide = masked_prefill(lm, embeds, state.keep, cfg.layer)
        assert (state.logits - logits).abs().max() <= MASK_TOL
        for i, ((k2, v2), (kf, vf)) in enumerate(zip(state.caches, caches)):
            assert k2.shape == (lm.cfg.kv_heads, state.keep.numel(), lm.cfg.dim_per_head)
            tol = 0.0 if i <= cfg.layer else MASK_TOL
            assert (k2 - kf[:, state.keep]).abs().max() <= tol
            assert (v2 - vf[:, state.keep]).abs().max() <= tol
        ours = list(greedy(lm, embed, state, 6, eos_id=None))
        theirs, _ = masked_greedy(lm, embed, logits, caches, hide, 6)
    assert ours == theirs


def test_gqa_scores_repeat_each_key_head_for_its_query_heads(ov_pipeline, ov_pruned) -> None:
    """The layer-K scores equal a loop in which query head h reads key head h // (H / H_kv)."""
    from prunevid.model.llama import causal_mask
    from prunevid.reference import question_scores

    cfg, visual, embeds, span, state = ov_pruned
    lm = ov_pipeline.model.language_model
    s = embeds.shape[0]
    with torch.inference_mode():
        x, _ = lm.run_layers(embeds, range(cfg.layer), torch.arange(s), causal_mask(s))
        layer = lm.model.layers[cfg.layer]
        q, k, _ = layer.self_attn.project(layer.input_layernorm(x))  # [H, S, d], [H_kv, S, d]
    h, kv, d = q.shape[0], k.shape[0], q.shape[-1]
    per_head = [torch.softmax(q[i, span[1]:] @ k[i // (h // kv)].T / d ** 0.5, dim=-1) for i in range(h)]
    expected = torch.stack(per_head)[:, :, span[0]:span[1]].amax(dim=(0, 1))  # [Nv]
    assert torch.allclose(question_scores(q, k, *span), expected, atol=1e-6)
    assert torch.allclose(state.scores, expected, atol=1e-5)


# ---------------------------------------------------------------- export and runtime

PAIRS = (  # (clip, question): five video/question pairs (the 1280x720 clip is left out: decoding cost)
    ("bikes", "What are the people in the video riding?"),
    ("bikes", "Describe the video in detail."),
    ("carphone_pristine", "Which animal appears in the video?\nA. A cat.\nB. A dog.\nC. A horse.\nD. A bird."),
    ("carphone_distorted", "How many people are in the room?"),
    ("scene_cut", "What changes in the middle of the clip?"),
)


def _pair_clip(name: str, real_clips, scene_cut_clip) -> Path:
    return scene_cut_clip if name == "scene_cut" else real_clips.get(name, scene_cut_clip)


@pytest.fixture(scope="module")
def ov_demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``prunevid demo --model llava-onevision --json`` in a fresh cache (its export serves the
    runtime tests below: the default settings, exported once)."""
    from test_cli import invoke

    cache = tmp_path_factory.mktemp("ov_demo_cache")
    result = invoke(["demo", "--model", "llava-onevision", "--json"], env={"PRUNEVID_CACHE": str(cache)})
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def ov_export(ov_demo) -> Path:
    return Path(ov_demo["export"]["path"])


def test_demo_runs_the_onevision_family(ov_demo) -> None:
    assert ov_demo["family"] == "llava-onevision" and ov_demo["export"]["reused"] is False
    prunevid, none = ov_demo["modes"]["prunevid"], ov_demo["modes"]["none"]
    assert none["visual_tokens"] == {"encoder": 256, "merged": 256, "kept": 256}  # 16 frames x 4 x 4
    assert prunevid["visual_tokens"]["kept"] < prunevid["visual_tokens"]["merged"] < 256
    # the newline row is prompt text: S = text rows (newline included) + visual rows
    assert none["prompt_tokens"]["prefill"] == none["prompt_tokens"]["text"] + 256
    assert 0 < ov_demo["prefill_flops_saved"] < 1 and ov_demo["ttft_ratio"] > 0
    facts = json.loads(Path(ov_demo["explain"]).with_suffix(".json").read_text())
    assert (facts["counts"]["merged"], facts["counts"]["kept"]) == (
        prunevid["visual_tokens"]["merged"], prunevid["visual_tokens"]["kept"])


def test_export_manifest_carries_the_family(ov_export, ov_model) -> None:
    _, cfg = ov_model
    manifest = json.loads((ov_export / "manifest.json").read_text())
    assert manifest["family"] == "llava-onevision"
    assert manifest["model"]["template"] == "ov-chat"
    assert manifest["model"]["image_token_index"] == cfg.video_token_index
    assert manifest["model"]["after_visual_ids"] == [cfg.text.vocab_size]
    assert manifest["geometry"]["kv_heads"] == 2 and manifest["geometry"]["heads"] == 4
    assert manifest["geometry"]["tokens_per_frame"] == 16


def test_export_prompt_ends_the_visual_block_with_the_newline_row(ov_export, ov_model) -> None:
    """The runtime and the calibration build prompts through ``export_prompt``: OneVision's newline
    row follows the video placeholder in both."""
    from prunevid.runtime.text import TextTokenizer, export_prompt

    _, cfg = ov_model
    manifest = json.loads((ov_export / "manifest.json").read_text())
    prompt = export_prompt(TextTokenizer.from_dir(ov_export), manifest["model"], QUESTION)
    assert prompt.ids[prompt.image_pos] == cfg.video_token_index
    assert prompt.ids[prompt.image_pos + 1] == cfg.text.vocab_size and prompt.ids.count(cfg.text.vocab_size) == 1


def test_check_passes_on_the_onevision_export(ov_export, scene_cut_clip) -> None:
    from prunevid import spec
    from prunevid.exporter.validate import check_export

    report = check_export(ov_export, clip=scene_cut_clip)
    assert report.ok, [o.line() for o in report.outputs if not o.ok]
    assert {o.graph for o in report.outputs} == set(spec.GRAPH_ORDER)
    assert report.end_to_end


@pytest.mark.parametrize("mode", [Mode.PRUNEVID, Mode.MERGE, Mode.NONE])
def test_runtime_token_ids_equal_eager(ov_dir, ov_export, real_clips, scene_cut_clip, mode) -> None:
    """Five video/question pairs: the torch-free runtime generates the eager reference's ids."""
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.pipeline import RuntimePipeline

    runtime, eager = RuntimePipeline(ov_export, mode=mode.value), EagerPipeline(ov_dir, PruneConfig(mode=mode))
    for name, question in PAIRS:
        clip = _pair_clip(name, real_clips, scene_cut_clip)
        ours, ref = runtime.run(clip, question, max_new_tokens=5), eager.run(clip, question, max_new_tokens=5)
        assert ours.token_ids == ref.token_ids, (name, question)
        assert ours.visual_tokens == ref.visual_tokens and ours.prompt_tokens == ref.prompt_tokens
        if mode is not Mode.NONE:
            assert ours.visual_tokens["merged"] < ours.visual_tokens["encoder"]


# ---------------------------------------------------------------- bad input


def _broken_copy(ov_dir: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "ov"
    shutil.copytree(ov_dir, folder)
    edit(folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _drop_tower(folder: Path) -> None:
    from safetensors.torch import save_file

    from prunevid.model.checkpoint import read_tensors, weight_files

    files = weight_files(folder)
    state = {k: v for k, v in read_tensors(files) if not k.startswith("vision_tower.")}
    for f in [*files, folder / "model.safetensors.index.json"]:
        f.unlink()
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize(("edit", "needles"), [
    (_drop_tower, ("missing weights", "vision_tower")),
    (lambda f: _edit_json(f / "config.json", model_type="llava"), ("model_type", "llava_onevision")),
    (lambda f: _edit_json(f / "config.json", vision_config={"model_type": "clip_vision_model"}),
     ("vision_config.model_type",)),
    (lambda f: _edit_json(f / "preprocessor_config.json", size={"height": 384, "width": 384}),
     ("384x384", "98x98")),
    (lambda f: _edit_json(f / "preprocessor_config.json", do_center_crop=True, crop_size={"height": 64, "width": 64}),
     ("crop_size",)),
], ids=["missing-tower", "model-type", "tower-type", "processor-size", "processor-crop"])
def test_bad_onevision_folder_is_one_line_error(ov_dir, tmp_path, scene_cut_clip, edit, needles) -> None:
    from test_cli import assert_one_line_error, invoke

    folder = _broken_copy(ov_dir, tmp_path, edit)
    before = sorted(p.name for p in folder.iterdir())
    assert_one_line_error(invoke(["run", "--model-dir", folder, "--video", scene_cut_clip, "--question", QUESTION]),
                          *needles)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_export_refuses_a_family_mismatch(ov_dir, tmp_path) -> None:
    from test_cli import assert_one_line_error, invoke

    out = tmp_path / "export"
    assert_one_line_error(invoke(["export", "--model", "pllava", "--checkpoint", ov_dir, "--out", out]),
                          "not a pllava checkpoint")
    assert not out.exists()


def test_export_without_checkpoint_exports_the_family_tiny_model(tmp_path) -> None:
    """``export --model llava-onevision`` with no --checkpoint exports the cached tiny OneVision."""
    from test_cli import invoke

    cache, out = tmp_path / "cache", tmp_path / "export"
    result = invoke(["export", "--model", "llava-onevision", "--out", out], env={"PRUNEVID_CACHE": str(cache)})
    assert result.exit_code == 0, (result.output, result.exception)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "llava-onevision" and manifest["model"]["template"] == "ov-chat"
    assert Path(manifest["source"]["path"]).resolve() == (cache / "tiny-llava-onevision").resolve()


def test_make_tiny_refuses_a_geometry_of_the_other_family(tmp_path) -> None:
    from test_cli import assert_one_line_error, invoke

    assert_one_line_error(invoke(["make-tiny", "--model", "llava-onevision", "--geometry", "bench", tmp_path / "x"]),
                          "not offered")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- templates and prompt


def test_chatml_templates_render_literally() -> None:
    from prunevid.runtime.templates import get_template

    head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\n"
    assert get_template("ov-chat").render("Why?") == head + "Why?<|im_end|>\n<|im_start|>assistant\n"
    assert get_template("ov-mc").render("Q?\nA. x\nB. y") == (
        head + "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_prompt_command_shows_the_newline_row_after_the_video(ov_dir, ov_model) -> None:
    from test_cli import invoke

    _, cfg = ov_model
    result = invoke(["prompt", "--model-dir", ov_dir, "--question", "Why?", "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    pos = view["image_pos"]
    assert view["template"] == "ov-chat" and view["image_token_index"] == cfg.video_token_index
    assert view["input_ids"][pos : pos + 2] == [cfg.video_token_index, cfg.text.vocab_size]
    assert view["tokens"][pos : pos + 2] == ["<video>", "<newline row>"]
    assert view["input_ids"].count(cfg.video_token_index) == 1 and view["input_ids"][0] != cfg.video_token_index


def test_a_template_of_the_other_family_is_named_in_one_line(ov_dir, tiny_model_dir, scene_cut_clip) -> None:
    from test_cli import assert_one_line_error, invoke

    assert_one_line_error(invoke(["prompt", "--model-dir", ov_dir, "--question", "Why?", "--template", "vcg"]),
                          "replace <video>; use one of its templates (ov-chat, ov-mc)")
    assert_one_line_error(invoke(["prompt", "--model-dir", tiny_model_dir, "--question", "Why?", "--template",
                                  "ov-chat"]), "replace <image>; use one of its templates")


def test_vision_params_count_the_siglip_tower(ov_model, hf_model) -> None:
    """The analytic SigLIP count (conv bias, no class token, no pre-norm; every layer runs at
    feature layer -1; post_layernorm loaded but not applied) equals the real tower's, ours and
    transformers'; counted as a CLIP tower it would be 3 x hidden off."""
    from dataclasses import replace

    from prunevid import costs

    model, cfg = ov_model
    hf, _ = hf_model
    d = cfg.vision.hidden_size
    assert costs.vision_layers_run(cfg) == cfg.vision.num_hidden_layers
    ours = sum(p.numel() for n, p in model.vision_tower.named_parameters() if "post_layernorm" not in n)
    theirs = sum(p.numel() for n, p in hf.model.vision_tower.named_parameters() if "post_layernorm" not in n)
    assert costs.vision_params(cfg) == ours == theirs
    assert costs.vision_params(replace(cfg, family="pllava")) == ours + 3 * d
    wb = costs.weight_bytes(cfg)
    assert wb.vision == 4 * ours
    assert wb.projector == 4 * sum(p.numel() for p in model.multi_modal_projector.parameters())
    embed = model.language_model.model.embed_tokens.weight.numel() + model.image_newline.numel()
    assert wb.embed == 4 * embed
    # the encoder's FLOPs run the SigLIP layers over the patches alone (no class token)
    v, c, patches = cfg.vision, cfg.text.hidden_size, cfg.vision.grid ** 2
    by_hand = (2 * patches * 3 * v.patch_size ** 2 * d + v.num_hidden_layers * costs.vit_layer_flops(v, patches)
               + 2 * patches * (d * c + c * c))
    assert costs.encoder_flops(cfg, 1) == by_hand


def test_llm_layer_params_count_qwen2_biases(ov_model) -> None:
    from prunevid.costs import llm_layer_params

    model, cfg = ov_model
    layer = model.language_model.model.layers[0]
    assert llm_layer_params(cfg.text) == sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("command", ["make-tiny", "demo"])
def test_geometry_help_describes_every_choice_for_any_family(command: str) -> None:
    """``--geometry`` help names each choice (ov32 included) and the command's help no family alone."""
    from prunevid.cli import cli

    option = next(p for p in cli.commands[command].params if "--geometry" in p.opts)
    assert "ov32" in option.type.choices
    assert all(f"{choice}:" in option.help for choice in option.type.choices), option.help
    assert "random PLLaVA" not in cli.commands[command].help


@pytest.mark.parametrize("command", ["export", "make-tiny", "demo"])
def test_model_choices_are_the_families(command: str) -> None:
    """``--model`` offers exactly the families of ``FAMILIES`` (declared once, not listed by hand)."""
    from prunevid.cli import cli
    from prunevid.model.config import FAMILIES

    option = next(p for p in cli.commands[command].params if "--model" in p.opts)
    assert list(option.type.choices) == list(FAMILIES) == ["pllava", "llava-onevision"]

