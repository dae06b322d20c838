"""``prunevid prompt`` against the official prompts and the official processor's tokenisation.

The reference is independent of prunevid: the prompt strings below are written out from the
official sources (PLLaVA's ``tasks/eval/eval_utils.py`` conversations as assembled by
``Conversation.get_prompt``, with the post-query and answer prompts of the ``pllava_eval_*.py``
scripts), and the ids come from transformers' tokenizer on the same ``tokenizer.json``, called
once on the whole string as the official processors do. Both kinds of real LLaMA ``tokenizer.json``
from ``../shared/fixtures/llama-tokenizer`` are used (never copied into the project).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from prunevid.cli import cli



def _fixtures() -> Path:
    """``shared/fixtures/llama-tokenizer`` beside the checkout (or beside a folder of worktrees)."""
    here = Path(__file__).resolve()
    for folder in here.parents:
        candidate = folder / "shared" / "fixtures" / "llama-tokenizer"
        if candidate.is_dir():
            return candidate
    return here.parents[2] / "shared" / "fixtures" / "llama-tokenizer"


FIXTURES = _fixtures()
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixture folder {FIXTURES} is not present")
KINDS = ("legacy", "first_nosplit")
IMAGE_ID = 32000
NEWLINE_ID = 13  # <0x0A>
SPACE_ID = 29871  # a lone "▁"

MC_TAIL = " \nOnly give the best option. ASSISTANT:Best option:("
OFFICIAL = {
    "mvbench": lambda q: (
        "Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
        "movement of objects, and the action and pose of persons. Based on your observations, select the best "
        "option that accurately addresses the question.\n USER: <image>\n USER: " + q + MC_TAIL),
    "videomme": lambda q: (
        "Select the best answer to the following multiple-choice question based on the video. Respond with "
        "only the letter (A, B, C, or D) of the correct option.\n USER: <image>\n USER: " + q + MC_TAIL),
    "vcg": lambda q: (
        "You are Video-ChatGPT, a large vision-language assistant. You are able to understand the video "
        "content that the user provides, and assist the user with a variety of tasks using natural language."
        "Follow the instructions carefully and explain your answers in detail based on the provided video."
        " USER: <image>\n USER: " + q + " ASSISTANT:"),
    "videoqabench": lambda q: (
        "USER: <image>\n The input consists of a sequence of key frames from a video. Answer the question "
        "concisely first and followed by significant events, characters, or objects that appear throughout "
        "the frames. Question: " + q + " \n ASSISTANT:\nAnswer: In the video,"),
}

QUESTIONS = {
    "plain": "What is the man doing?",
    "punctuation": "...and then? (the last scene)",
    "quote": "\"Where\" does the dog go?",
    "digits": "3 people enter; how many leave after 10 seconds?",
    "non_ascii": "¿Qué hace el perro? 犬は何をしていますか émigré 🐕",
    "leading_space": " what colour is the car?",
    "mvbench_mc": "Question: What did the person do first?\nOptions:\n(A) Opened the door.\n(B) Sat on the chair."
                  "\n(C) Picked up the cup.\n(D) Turned off the light.",
    "videomme_mc": "Which is true?\nA. 2 cats.\nB. Ünïcödé options.\nC. (none)\nD. All of the above",
}


def invoke(*args) -> Result:
    return CliRunner().invoke(cli, ["prompt", *[str(a) for a in args]])


def prompt_json(folder: Path, question: str, *extra, flag: str = "--model-dir") -> dict:
    result = invoke(flag, folder, "--question", question, "--json", *extra)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.output)


def assert_one_line_error(result: Result, needle: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert needle in lines[0], lines[0]


def write_checkpoint(folder: Path, kind: str, image_token_index: int = IMAGE_ID) -> Path:
    """A config-only "checkpoint": config.json and links to the fixture's tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["PllavaForConditionalGeneration"], "model_type": "llava",
              "image_token_index": image_token_index, "pad_token_id": 32001,
              "text_config": {"model_type": "llama", "vocab_size": 32064}}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).symlink_to(FIXTURES / kind / name)
    return folder


@pytest.fixture(scope="module", params=KINDS)
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, write_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def official_tokenizer(checkpoint):
    """transformers' tokenizer on the checkpoint's own tokenizer.json (its pipeline as written)."""
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(checkpoint[1] / "tokenizer.json"))


@pytest.mark.parametrize("question", list(QUESTIONS.values()), ids=list(QUESTIONS))
@pytest.mark.parametrize("template", sorted(OFFICIAL))
def test_prompt_equals_official_whole_string_tokenisation(checkpoint, official_tokenizer, template, question):
    data = prompt_json(checkpoint[1], question, "--template", template)
    official = OFFICIAL[template](question)
    assert data["template"] == template
    assert data["text"] == official
    expected = official_tokenizer(official)["input_ids"]  # the post-processor adds <s>
    assert expected[0] == 1 and expected.count(IMAGE_ID) == 1
    assert data["input_ids"] == expected
    assert data["image_pos"] == expected.index(IMAGE_ID)
    assert data["tokens"][data["image_pos"]] == "<image>" and len(data["tokens"]) == len(expected)


def test_no_extra_space_after_image_on_first_nosplit(tmp_path):
    """The failure before: splitting at <image> put a lone "▁" (29871) after it on this kind."""
    folder = write_checkpoint(tmp_path / "ck", "first_nosplit")
    for template in OFFICIAL:
        data = prompt_json(folder, "What happens?", "--template", template)
        pos = data["image_pos"]
        assert data["input_ids"][pos + 1] == NEWLINE_ID, (template, data["tokens"][pos - 2:pos + 3])
        assert SPACE_ID not in data["input_ids"][pos + 1:pos + 3]


def test_auto_tokenizer_agrees_on_first_nosplit(tmp_path):
    """transformers' AutoTokenizer (4.x and 5.x alike) on the newer kind of tokenizer.json."""
    transformers = pytest.importorskip("transformers")
    folder = write_checkpoint(tmp_path / "ck", "first_nosplit")
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    for template in OFFICIAL:
        question = QUESTIONS["mvbench_mc"]
        assert prompt_json(folder, question, "--template", template)["input_ids"] == \
            auto(OFFICIAL[template](question))["input_ids"]


def test_default_template_and_plain_text(tmp_path):
    folder = write_checkpoint(tmp_path / "ck", "first_nosplit")
    assert prompt_json(folder, "Why?")["template"] == "vcg"
    result = invoke("--model-dir", folder, "--question", "Why?")
    assert result.exit_code == 0, result.output
    assert result.output == OFFICIAL["vcg"]("Why?") + "\n"


def test_reads_no_weights(tmp_path):
    folder = write_checkpoint(tmp_path / "ck", "legacy")
    (folder / "model.safetensors").write_bytes(b"\0not a safetensors file")
    (folder / "model.safetensors.index.json").write_text("{broken")
    assert prompt_json(folder, "Why?")["input_ids"][0] == 1


def test_image_token_index_mismatch_is_one_line_error(tmp_path):
    folder = write_checkpoint(tmp_path / "ck", "first_nosplit", image_token_index=32001)
    assert_one_line_error(invoke("--model-dir", folder, "--question", "Why?"), "maps <image> to 32000")


def test_tokenizer_without_image_is_one_line_error(tmp_path):
    folder = write_checkpoint(tmp_path / "ck", "legacy")
    data = json.loads((FIXTURES / "legacy" / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert_one_line_error(invoke("--model-dir", folder, "--question", "Why?"), "no <image> token")


@pytest.mark.parametrize("args, needle", [
    ([], "exactly one of --model-dir"),
    (["--engine-dir", "{dir}"], "exactly one of --model-dir"),
    (["--template", "videoqa"], "unknown prompt template 'videoqa'"),
    (["--question", "what is in <image>?"], "must not contain <image>"),
    (["--question", "   "], "question is empty"),
], ids=["neither-dir", "both-dirs", "unknown-template", "placeholder", "empty"])
def test_errors_are_one_line(tmp_path, args, needle):
    folder = write_checkpoint(tmp_path / "ck", "first_nosplit")
    base = [] if args == [] else ["--model-dir", folder]
    args = [a.replace("{dir}", str(folder)) for a in args]
    if "--question" not in args:
        args += ["--question", "Why?"]
    assert_one_line_error(invoke(*base, *args), needle)


def test_engine_dir_reads_manifest_and_tokenizer_only(tiny_model_dir, tiny_export, tmp_path):
    """From an export: its template by default, the same ids as the runtime, no graph opened."""
    from prunevid import spec
    from prunevid.runtime.text import TextTokenizer, build_prompt

    manifest = json.loads((tiny_export / spec.MANIFEST).read_text())
    question = QUESTIONS["mvbench_mc"]
    data = prompt_json(tiny_export, question, flag="--engine-dir")
    assert data["template"] == manifest["model"]["template"] == "vcg"
    tok = TextTokenizer.from_dir(tiny_export)
    expected = build_prompt(tok, question, "vcg", manifest["model"]["image_token_index"])
    assert (data["input_ids"], data["image_pos"], data["text"]) == (expected.ids, expected.image_pos, expected.text)
    assert data["input_ids"] == prompt_json(tiny_model_dir, question)["input_ids"]
    # a folder with the manifest and the tokenizer files but no graphs at all still answers
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (spec.MANIFEST, *spec.TOKENIZER_FILES):
        if (tiny_export / name).is_file():
            (bare / name).write_bytes((tiny_export / name).read_bytes())
    assert prompt_json(bare, question, "--template", "mvbench", flag="--engine-dir")["text"] == \
        OFFICIAL["mvbench"](question)
