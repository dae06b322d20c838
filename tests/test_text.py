"""Tests of prompt templates, the text tokenizer wrapper and the tiny trained tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunevid.errors import ModelDirError, PromptError
from prunevid.model.tiny_tokenizer import build_tiny_tokenizer
from prunevid.runtime.text import (
    DEFAULT_TEMPLATE,
    IMAGE_PLACEHOLDER,
    TEMPLATES,
    TextTokenizer,
    build_prompt,
    check_fits,
)

SENTENCE = "A man in a red jacket walks his brown dog; Zebras jump 3 times! émigré"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny tokenizer folder and the ids returned by build_tiny_tokenizer."""
    out = tmp_path_factory.mktemp("tok")
    return out, build_tiny_tokenizer(out)


@pytest.fixture(scope="module")
def tok(tiny_dir) -> TextTokenizer:
    return TextTokenizer.from_dir(tiny_dir[0])


def test_tiny_tokenizer_is_deterministic(tiny_dir, tmp_path):
    info = build_tiny_tokenizer(tmp_path)
    assert info == tiny_dir[1]
    for name in TOKENIZER_FILES:
        assert (tmp_path / name).read_bytes() == (tiny_dir[0] / name).read_bytes(), name


def test_tiny_tokenizer_ids(tiny_dir, tok):
    info = tiny_dir[1]
    assert info == {"vocab_size": 514, "image_token_id": 512, "bos_token_id": 1,
                    "eos_token_id": 2, "pad_token_id": 513}
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 514)
    assert tok.tokenizer.token_to_id(IMAGE_PLACEHOLDER) == info["image_token_id"]


def test_round_trip(tok):
    ids = tok.encode(SENTENCE)
    assert tok.bos_id not in ids
    assert tok.decode(ids) == SENTENCE
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == SENTENCE


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_build_prompt_places_image_once(tok, tiny_dir, name):
    image_id = tiny_dir[1]["image_token_id"]
    prompt = build_prompt(tok, "What is the dog doing?", name, image_id)
    assert prompt.ids[0] == tok.bos_id
    assert prompt.ids.count(image_id) == 1
    assert prompt.ids[prompt.image_pos] == image_id
    left = TEMPLATES[name].render("What is the dog doing?").split(IMAGE_PLACEHOLDER)[0]
    assert prompt.image_pos == 1 + len(tok.encode(left))


def test_encode_prompt_rejects_zero_or_two_placeholders(tok):
    with pytest.raises(PromptError):
        tok.encode_prompt("no placeholder here", 512)
    with pytest.raises(PromptError):
        tok.encode_prompt("<image> and <image>", 512)


def test_question_with_placeholder_is_rejected(tok):
    with pytest.raises(PromptError):
        build_prompt(tok, "what is in <image>?", DEFAULT_TEMPLATE, 512)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_templates_render_one_placeholder(name):
    text = TEMPLATES[name].render("Q {x}?")
    assert text.count(IMAGE_PLACEHOLDER) == 1
    assert text.count("Q {x}?") == 1
    assert text.startswith(TEMPLATES[name].system)
    assert TEMPLATES[name].source and TEMPLATES[name].conversation.startswith("conv_eval_")


def test_template_names_and_default():
    assert sorted(TEMPLATES) == ["mvbench", "vcg", "videomme", "videoqabench"]
    assert DEFAULT_TEMPLATE == "vcg"
    assert "videoqa" not in TEMPLATES  # the former system prompt is in no official repository


def test_preset_templates():
    from prunevid.config import PRESET_TEMPLATES, PRESETS, resolve_template
    from prunevid.errors import ConfigError

    assert set(PRESET_TEMPLATES) == set(PRESETS)
    assert PRESET_TEMPLATES == {"pllava-mvbench": "mvbench", "pllava-vcg": "vcg"}
    assert set(PRESET_TEMPLATES.values()) <= set(TEMPLATES)
    assert resolve_template(None, None) == "vcg"
    assert resolve_template(None, "pllava-mvbench") == "mvbench"
    assert resolve_template("videomme", "pllava-vcg") == "videomme"
    with pytest.raises(ConfigError):
        resolve_template(None, "nope")


@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
def test_empty_question(tok, question):
    with pytest.raises(PromptError) as err:
        build_prompt(tok, question, DEFAULT_TEMPLATE, 512)
    assert "\n" not in str(err.value)
    assert str(err.value) == "question is empty"


def test_unknown_template(tok):
    with pytest.raises(PromptError) as err:
        build_prompt(tok, "hi", "nope", 512)
    message = str(err.value)
    assert "\n" not in message
    assert all(name in message for name in TEMPLATES)


def test_check_fits_boundary():
    # 10 text tokens incl. placeholder + 20 visual - 1 + 5 new = 34 positions
    check_fits(10, 20, 5, 34)
    with pytest.raises(PromptError) as err:
        check_fits(10, 20, 5, 33)
    message = str(err.value)
    assert "\n" not in message
    assert "29 tokens (9 text + 20 visual) plus 5 new tokens" in message
    assert "33 positions" in message


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ModelDirError):
        TextTokenizer.from_dir(tmp_path)
    with pytest.raises(ModelDirError):
        TextTokenizer.from_dir(tmp_path / "absent")


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelDirError) as err:
        TextTokenizer.from_dir(tmp_path)
    assert "\n" not in str(err.value)


def test_config_dict_tokens_and_no_bos(tiny_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir[0] / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        '{"add_bos_token": false, "bos_token": {"content": "<s>"}, '
        '"eos_token": {"content": "</s>", "special": true}}'
    )
    tok = TextTokenizer.from_dir(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.add_bos_token) == (1, 2, False)
    prompt = build_prompt(tok, "hi", DEFAULT_TEMPLATE, 512)
    assert prompt.ids[0] != tok.bos_id


def test_unknown_bos_is_model_dir_error(tiny_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir[0] / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<BOS>"}')
    with pytest.raises(ModelDirError):
        TextTokenizer.from_dir(tmp_path)


def test_hf_tokenizer_agrees(tiny_dir, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir[0] / "tokenizer.json"))
    assert hf(SENTENCE, add_special_tokens=False)["input_ids"] == tok.encode(SENTENCE)
    auto = transformers.AutoTokenizer.from_pretrained(str(tiny_dir[0]))
    assert auto(SENTENCE)["input_ids"] == [tok.bos_id, *tok.encode(SENTENCE)]
    assert auto.convert_tokens_to_ids(IMAGE_PLACEHOLDER) == tiny_dir[1]["image_token_id"]
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (1, 2, 513)


def test_runtime_text_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, prunevid.runtime.text; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_tiny_tokenizer_knows_image_as_special_token(tiny_dir, tok):
    image_id = tiny_dir[1]["image_token_id"]
    added = tok.tokenizer.get_added_tokens_decoder()
    assert added[image_id].content == IMAGE_PLACEHOLDER and added[image_id].special
    # whole-string encoding keeps the placeholder as one token, wherever it stands
    assert tok.encode(f"a{IMAGE_PLACEHOLDER}b").count(image_id) == 1
    assert tok.decode(tok.encode(f"A {IMAGE_PLACEHOLDER}\n B")) == "A \n B"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_tiny_prompt_equals_hf_whole_string(tiny_dir, tok, name):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_dir[0]))
    question = "Question: ¿Qué? 3 dogs\nOptions:\n(A) run\n(B) sit"
    prompt = build_prompt(tok, question, name, tiny_dir[1]["image_token_id"])
    assert prompt.text == TEMPLATES[name].render(question)
    assert prompt.ids == hf(prompt.text)["input_ids"]


def _tokenizer_dir(tiny_dir, tmp_path: Path, edit) -> Path:
    """A copy of the tiny tokenizer with ``edit(tokenizer_json_dict)`` applied."""
    import json

    data = json.loads((tiny_dir[0] / "tokenizer.json").read_text())
    edit(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    return tmp_path


def _drop_image(data: dict) -> None:
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != IMAGE_PLACEHOLDER]


def test_tokenizer_without_image_token_is_one_line_error(tiny_dir, tmp_path):
    tok = TextTokenizer.from_dir(_tokenizer_dir(tiny_dir, tmp_path, _drop_image))
    with pytest.raises(ModelDirError) as err:
        build_prompt(tok, "What?", DEFAULT_TEMPLATE, 512)
    assert "\n" not in str(err.value) and "no <image> token" in str(err.value)


def test_image_token_mapped_elsewhere_is_one_line_error(tok):
    with pytest.raises(ModelDirError) as err:
        build_prompt(tok, "What?", DEFAULT_TEMPLATE, 513)
    message = str(err.value)
    assert "\n" not in message and "maps <image> to 512" in message and "image_token_index is 513" in message


def test_image_in_vocab_but_not_added_is_one_line_error(tiny_dir, tmp_path):
    def vocab_only(data: dict) -> None:
        _drop_image(data)
        data["model"]["vocab"][IMAGE_PLACEHOLDER] = 512

    tok = TextTokenizer.from_dir(_tokenizer_dir(tiny_dir, tmp_path, vocab_only))
    assert tok.tokenizer.token_to_id(IMAGE_PLACEHOLDER) == 512
    with pytest.raises(ModelDirError) as err:
        build_prompt(tok, "What?", DEFAULT_TEMPLATE, 512)
    assert "into 0 image tokens" in str(err.value)


def test_add_eos_token_and_bad_flags(tiny_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir[0] / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": true, "add_eos_token": true}')
    tok = TextTokenizer.from_dir(tmp_path)
    prompt = build_prompt(tok, "hi", DEFAULT_TEMPLATE, 512)
    assert prompt.ids[0] == 1 and prompt.ids[-1] == 2
    assert prompt.ids[1:-1] == tok.encode(prompt.text)
    for bad in ('{"add_bos_token": "yes"}', '{"add_eos_token": 1}'):
        (tmp_path / "tokenizer_config.json").write_text(bad)
        with pytest.raises(ModelDirError) as err:
            TextTokenizer.from_dir(tmp_path)
        assert "tokenizer_config.json" in str(err.value) and "true or false" in str(err.value)


def test_question_not_valid_text(tok):
    bad = b"caf\xff?".decode("utf-8", "surrogateescape")  # how Python passes an undecodable argv
    with pytest.raises(PromptError) as err:
        build_prompt(tok, bad, DEFAULT_TEMPLATE, 512)
    assert str(err.value) == "question is not valid UTF-8 text: it contains the byte 0xff at character 3"
