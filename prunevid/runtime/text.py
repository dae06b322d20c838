"""Prompt templates and text tokenization for the runtime.

This module builds the token ids of a PLLaVA-style prompt: a Vicuna-style conversation whose
user turn holds exactly one ``<image>`` placeholder, later replaced by the visual tokens.

It depends only on the ``tokenizers`` library and the standard library; it must never import
torch or transformers, so that the lean runtime stays lean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from prunevid.errors import ModelDirError, PromptError, one_line, read_json_object
from prunevid.fields import check_tokenizer_config, text_problem

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_TEMPLATE = "videoqa"

_QUESTION_FIELD = "{question}"

_MVBENCH_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, "
    "the detail and movement of objects, and the action and pose of persons. "
    "Based on your observations, select the best option that accurately addresses the question.\n"
)
_VIDEOMME_SYSTEM = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\n"
)
_VIDEOQA_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, "
    "the detail and movement of objects, and the action and pose of persons. "
    "Based on your observations, answer the question.\n"
)


@dataclass(frozen=True)
class Template:
    """A conversation template; the rendered prompt is the concatenation of its parts.

    ``user_question`` contains the literal ``{question}``, which :meth:`render` replaces with
    the caller's question text (by plain substitution, so braces in questions are safe).
    """

    name: str
    system: str
    user_video: str
    user_question: str
    assistant: str

    def render(self, question: str) -> str:
        """Return the full prompt for ``question``, holding exactly one ``<image>`` placeholder
        (unless the question itself contains one, which :meth:`TextTokenizer.encode_prompt`
        rejects)."""
        turn = self.user_question.replace(_QUESTION_FIELD, question)
        return self.system + self.user_video + turn + self.assistant


def _vicuna(name: str, system: str, assistant: str) -> Template:
    """A PLLaVA Vicuna-style template with the given system prompt and assistant prefix."""
    return Template(
        name=name,
        system=system,
        user_video=f" USER: {IMAGE_PLACEHOLDER}\n",
        user_question=f" USER: {_QUESTION_FIELD}",
        assistant=assistant,
    )


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        _vicuna("mvbench", _MVBENCH_SYSTEM, " ASSISTANT:Best option:("),
        _vicuna("videomme", _VIDEOMME_SYSTEM, " ASSISTANT:"),
        _vicuna("videoqa", _VIDEOQA_SYSTEM, " ASSISTANT:"),
    )
}


def _token_content(value: Any) -> str | None:
    """A special token as HF writes it in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_tokenizer_json(path: Path) -> Tokenizer:
    """Load ``tokenizer.json``, raising :class:`ModelDirError` if it is missing or corrupt."""
    if not path.is_file():
        raise ModelDirError(f"missing tokenizer file {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad files
        raise ModelDirError(f"cannot read tokenizer file {path}: {one_line(exc)}") from None


def _load_config(path: Path) -> dict[str, Any]:
    """Load ``tokenizer_config.json``; an absent file means LLaMA defaults (empty dict). The
    fields read are checked (:func:`prunevid.fields.check_tokenizer_config`)."""
    if not path.is_file():
        return {}
    return check_tokenizer_config(read_json_object(path, ModelDirError), str(path))


def _resolve_id(tokenizer: Tokenizer, config: dict[str, Any], key: str, default: str) -> int:
    """The id of the special token named by ``config[key]`` (or ``default``)."""
    token = _token_content(config.get(key, default))
    token_id = tokenizer.token_to_id(token) if token is not None else None
    if token_id is None:
        raise ModelDirError(f"{key} {token!r} from tokenizer_config.json is not in the vocabulary")
    return token_id


class TextTokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` that knows BOS/EOS and the prompt layout.

    Attributes: ``bos_id``, ``eos_id``, ``vocab_size`` (including added tokens) and
    ``add_bos_token``.
    """

    def __init__(self, tokenizer: Tokenizer, *, bos_id: int, eos_id: int, add_bos_token: bool):
        """Wrap ``tokenizer``; prefer :meth:`from_dir` to build one from a model folder."""
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos_token = add_bos_token
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> TextTokenizer:
        """Load ``tokenizer.json`` and ``tokenizer_config.json`` from ``model_dir``.

        Raises :class:`ModelDirError` if the tokenizer is missing or corrupt, or if the BOS/EOS
        tokens named by the config (default ``<s>``/``</s>``) are not in the vocabulary.
        """
        model_dir = Path(model_dir)
        tokenizer = _load_tokenizer_json(model_dir / "tokenizer.json")
        config = _load_config(model_dir / "tokenizer_config.json")
        return cls(
            tokenizer,
            bos_id=_resolve_id(tokenizer, config, "bos_token", "<s>"),
            eos_id=_resolve_id(tokenizer, config, "eos_token", "</s>"),
            add_bos_token=bool(config.get("add_bos_token", True)),
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, prompt: str, image_token_id: int) -> list[int]:
        """Ids of a rendered prompt: [BOS] + left + [image_token_id] + right.

        ``prompt`` must contain ``<image>`` exactly once (else :class:`PromptError`); the text
        on each side is encoded separately, so the tokenizer need not know ``<image>``.
        """
        parts = prompt.split(IMAGE_PLACEHOLDER)
        if len(parts) != 2:
            raise PromptError(
                f"prompt must contain {IMAGE_PLACEHOLDER} exactly once, found {len(parts) - 1}"
            )
        bos = [self.bos_id] if self.add_bos_token else []
        return bos + self.encode(parts[0]) + [image_token_id] + self.encode(parts[1])

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, skipping special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclass(frozen=True)
class PromptIds:
    """Token ids of a prompt and the index of its single image token."""

    ids: list[int]
    image_pos: int


def get_template(name: str) -> Template:
    """The template called ``name``; :class:`PromptError` listing the known names otherwise."""
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise PromptError(f"unknown prompt template {name!r} (known: {known})") from None


def build_prompt(
    tokenizer: TextTokenizer, question: str, template: str, image_token_id: int
) -> PromptIds:
    """Render ``question`` with ``template`` and encode it, locating the image token.

    Raises :class:`PromptError` for an empty or whitespace-only question, an unknown template,
    or a question that itself contains ``<image>``.
    """
    if not question or not question.strip():
        raise PromptError("question is empty")
    problem = text_problem(question)
    if problem:
        raise PromptError(f"question is not valid text: it {problem}")
    prompt = get_template(template).render(question)
    ids = tokenizer.encode_prompt(prompt, image_token_id)
    return PromptIds(ids=ids, image_pos=ids.index(image_token_id))


def check_fits(
    num_text_tokens: int, num_visual_tokens: int, max_new_tokens: int, max_positions: int
) -> None:
    """Raise :class:`PromptError` if the prompt plus generation exceeds the model's context.

    ``num_text_tokens`` counts the image placeholder, which the ``num_visual_tokens`` visual
    tokens replace, so the prompt holds ``num_text_tokens - 1 + num_visual_tokens`` positions.
    """
    text = num_text_tokens - 1
    prompt = text + num_visual_tokens
    if prompt + max_new_tokens > max_positions:
        raise PromptError(
            f"prompt of {prompt} tokens ({text} text + {num_visual_tokens} visual) plus "
            f"{max_new_tokens} new tokens exceeds the model's context of {max_positions} positions"
        )
