"""Text tokenization and prompt ids for the runtime.

This module turns a question into the token ids of the official prompt (the conversation
templates are data in :mod:`prunevid.runtime.templates`): the whole prompt, ``<image>`` included,
is tokenised in one call, as the official processors do, with BOS (and EOS) added as the
checkpoint's ``tokenizer_config.json`` says. ``<image>`` must be a token of the tokenizer whose id
is the model's ``image_token_index``; the visual tokens later replace that one id.

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
from prunevid.runtime.templates import (  # noqa: F401  (re-exported: the prompt API lives here)
    ALL_TEMPLATES,
    DEFAULT_TEMPLATE,
    IMAGE_PLACEHOLDER,
    PLACEHOLDERS,
    TEMPLATES,
    Template,
    get_template,
)

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

    Attributes: ``bos_id``, ``eos_id``, ``vocab_size`` (including added tokens),
    ``add_bos_token`` and ``add_eos_token`` (what the official processor adds around a prompt).
    """

    def __init__(self, tokenizer: Tokenizer, *, bos_id: int, eos_id: int, add_bos_token: bool,
                 add_eos_token: bool = False):
        """Wrap ``tokenizer``; prefer :meth:`from_dir` to build one from a model folder."""
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> TextTokenizer:
        """Load ``tokenizer.json`` and ``tokenizer_config.json`` from ``model_dir``.

        Raises :class:`ModelDirError` if the tokenizer is missing or corrupt, if the BOS/EOS
        tokens named by the config (default ``<s>``/``</s>``; ``"bos_token": null`` means no BOS, as
        Qwen2's) are not in the vocabulary, or if
        ``add_bos_token`` / ``add_eos_token`` (defaults true / false, as LLaMA's) are not booleans.
        """
        model_dir = Path(model_dir)
        tokenizer = _load_tokenizer_json(model_dir / "tokenizer.json")
        config = _load_config(model_dir / "tokenizer_config.json")
        no_bos = "bos_token" in config and config["bos_token"] is None  # Qwen2: no BOS at all
        return cls(
            tokenizer,
            bos_id=None if no_bos else _resolve_id(tokenizer, config, "bos_token", "<s>"),
            eos_id=_resolve_id(tokenizer, config, "eos_token", "</s>"),
            add_bos_token=False if no_bos else config.get("add_bos_token", True),  # a bool: checked on load
            add_eos_token=config.get("add_eos_token", False),
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def check_image_token(self, image_token_id: int, placeholder: str = IMAGE_PLACEHOLDER) -> None:
        """Raise :class:`ModelDirError` unless ``placeholder`` is a token with id ``image_token_id``."""
        found = self.tokenizer.token_to_id(placeholder)
        field = PLACEHOLDERS.get(placeholder, "image_token_index")
        if found is None:
            raise ModelDirError(
                f"the tokenizer has no {placeholder} token (the model's {field} is "
                f"{image_token_id}); add it as a special token, as llava-hf checkpoints do"
            )
        if found != image_token_id:
            raise ModelDirError(
                f"the tokenizer maps {placeholder} to {found}, but the model's "
                f"{field} is {image_token_id}"
            )

    def encode_prompt(self, prompt: str, image_token_id: int, placeholder: str = IMAGE_PLACEHOLDER) -> list[int]:
        """Ids of a rendered prompt, tokenised in one call as the official processor does.

        BOS is prepended if ``add_bos_token`` and EOS appended if ``add_eos_token``. ``prompt``
        must hold ``<image>`` exactly once and come out with exactly one ``image_token_id``
        (:class:`PromptError` otherwise); the tokenizer must map ``<image>`` to
        ``image_token_id`` and keep it whole (:class:`ModelDirError` otherwise).
        """
        count = prompt.count(placeholder)
        if count != 1:
            raise PromptError(f"prompt must contain {placeholder} exactly once, found {count}")
        self.check_image_token(image_token_id, placeholder)
        ids = self.encode(prompt)
        found = ids.count(image_token_id)
        if found != 1:
            raise ModelDirError(
                f"the tokenizer turns the prompt's single {placeholder} into {found} image tokens; "
                f"{placeholder} must be an added (special) token"
            )
        bos = [self.bos_id] if self.add_bos_token else []
        eos = [self.eos_id] if self.add_eos_token else []
        return bos + ids + eos

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, skipping special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclass(frozen=True)
class PromptIds:
    """Token ids of a prompt, the index of its single image token, and the prompt text."""

    ids: list[int]
    image_pos: int
    text: str = ""


def check_question(question: str) -> None:
    """Raise :class:`PromptError` for a question that is empty, not valid text, or holds ``<image>``."""
    problem = text_problem(question)  # a lone surrogate (non-UTF-8 byte) or a control character
    if problem:
        raise PromptError(f"question {problem}")
    if not question.strip():
        raise PromptError("question is empty")
    for placeholder in PLACEHOLDERS:
        if placeholder in question:
            raise PromptError(f"question must not contain {placeholder}: the template places the video")


def export_prompt(tokenizer: TextTokenizer, model: dict, question: str, template: str | None = None) -> PromptIds:
    """The prompt an export's manifest ``model`` block defines for ``question`` (its template unless
    ``template`` names another; its image token; the rows after the visual block, such as OneVision's
    newline). The runtime and the calibration both build their prompts here."""
    return build_prompt(tokenizer, question, template or model["template"], model["image_token_index"],
                        model.get("after_visual_ids", ()))


def build_prompt(
    tokenizer: TextTokenizer, question: str, template: str, image_token_id: int,
    after_visual: tuple[int, ...] | list[int] = (),
) -> PromptIds:
    """Render ``question`` with ``template`` and encode it, locating the image token.

    ``after_visual`` ids are inserted right after the placeholder: rows the model family puts
    after the visual block (LLaVA-OneVision's newline, :attr:`ModelConfig.after_visual_ids`).

    Raises :class:`PromptError` for an empty or whitespace-only question, one that is not valid
    text or contains ``<image>``, or an unknown template; :class:`ModelDirError` if the tokenizer
    does not map ``<image>`` to ``image_token_id``.
    """
    check_question(question)
    chosen = get_template(template)
    for other in PLACEHOLDERS:  # a template of the other family: say so, not which id is off
        if other != chosen.placeholder and tokenizer.tokenizer.token_to_id(other) == image_token_id:
            names = ", ".join(t.name for t in ALL_TEMPLATES.values() if t.placeholder == other)
            raise PromptError(f"template {template!r} places {chosen.placeholder}, but this model's visual rows "
                              f"replace {other}; use one of its templates ({names})")
    text = chosen.render(question)
    ids = tokenizer.encode_prompt(text, image_token_id, chosen.placeholder)
    pos = ids.index(image_token_id)
    ids[pos + 1 : pos + 1] = list(after_visual)
    return PromptIds(ids=ids, image_pos=pos, text=text)


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


class TextDeltas:
    """Incremental detokenization for streaming: :meth:`add` returns the text a new token adds (held
    back while a multi-byte character is incomplete); :meth:`flush` returns what is left at the end."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            delta, self.shown = text[len(self.shown):], text
            return delta
        return ""

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        delta = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown = text
        return delta
