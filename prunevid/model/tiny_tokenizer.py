"""A tiny, real byte-level BPE tokenizer trained locally, for tiny test models.

:func:`build_tiny_tokenizer` trains a byte-level BPE on the embedded English corpus
:data:`CORPUS` (plus every prompt template rendered with sample questions) and writes a
HF-compatible tokenizer folder. Training is deterministic: every call writes the same bytes.

Token ids: ``<unk>`` = 0, ``<s>`` = 1 (BOS), ``</s>`` = 2 (EOS), then 256 byte tokens and the
learned merges up to the trained vocabulary size ``V``; then the added special tokens
``<image>`` = ``V`` and ``<pad>`` = ``V + 1`` (the layout of llava-hf's LLaMA tokenizers).
With the default ``vocab_size=512``, ``V`` is 512, so ``<image>`` = 512 and ``<pad>`` = 513.
The small corpus saturates near ``V`` = 1160: larger targets give that size (the returned
dict always holds the real ids).

The ``chatml`` style (LLaVA-OneVision's Qwen2 layout) has ``<|endoftext|>`` = 0 (pad),
``<|im_start|>`` = 1, ``<|im_end|>`` = 2 (EOS), no BOS, and ``<image>`` = ``V``, ``<video>`` = ``V + 1``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

from prunevid.runtime.templates import ALL_TEMPLATES, VIDEO_PLACEHOLDER
from prunevid.runtime.text import IMAGE_PLACEHOLDER

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
MODEL_MAX_LENGTH = 4096


@dataclass(frozen=True)
class TokenizerStyle:
    """The special tokens of one family's tokenizer.

    ``trained`` are the first ids (before the 256 byte tokens), ``added`` follow the learned
    merges; ``bos`` None means no BOS token at all (Qwen2). ``placeholder`` selects the templates
    whose rendered prompts join the training corpus.
    """

    trained: tuple[str, ...]
    added: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    placeholder: str


STYLES: dict[str, TokenizerStyle] = {
    # LLaMA / llava-hf: <unk> <s> </s>, then <image> and <pad> added
    "llama": TokenizerStyle(trained=(UNK, BOS, EOS), added=(IMAGE_PLACEHOLDER, PAD), bos=BOS, eos=EOS, pad=PAD,
                            unk=UNK, placeholder=IMAGE_PLACEHOLDER),
    # Qwen2 / llava-onevision: ChatML markers, no BOS, EOS <|im_end|>, <image> and <video> added
    "chatml": TokenizerStyle(trained=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                             added=(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER), bos=None, eos="<|im_end|>",
                             pad="<|endoftext|>", unk=None, placeholder=VIDEO_PLACEHOLDER),
}

CORPUS: tuple[str, ...] = (
    "A man in a red jacket walks his brown dog along the beach at sunset.",
    "Two children are playing with a yellow ball in the green park.",
    "The camera slowly pans from left to right across a busy city street.",
    "A woman picks up a blue cup from the kitchen table and drinks from it.",
    "A black cat jumps onto the wooden chair and then lies down.",
    "The video shows a chef chopping onions and carrots on a white board.",
    "A person opens the door, enters the room and turns on the light.",
    "Several cars drive quickly through the intersection while it rains.",
    "A small bird lands on a branch, looks around and flies away.",
    "The girl in the pink dress is dancing in front of a large mirror.",
    "An old man sits on a bench and reads a newspaper in the morning.",
    "A boy throws a frisbee and the white dog runs to catch it.",
    "The horse gallops across the field while clouds move in the sky.",
    "Someone is pouring water from a glass bottle into a metal pot.",
    "A group of people are standing in a circle and talking to each other.",
    "The man puts the book on the shelf, then takes out a green box.",
    "A red car stops at the traffic light and a cyclist passes behind it.",
    "A cat is sleeping on the sofa next to an orange pillow.",
    "Two men are shaking hands in front of a grey building.",
    "The woman waves her hand and smiles at the camera.",
    "A fish swims slowly near the rocks at the bottom of the clear water.",
    "In the first scene, a person is running; in the last scene, the person is sitting.",
    "The ball rolls down the hill, bounces twice and stops near the tree.",
    "A young woman is riding a bicycle along the river in the afternoon.",
    "The boy pushes the box forward, and then he pulls it back again.",
    "An elephant sprays water with its trunk while other elephants watch.",
    "A hand places a purple flower into a tall vase on the window sill.",
    "The player kicks the football towards the goal and the crowd cheers.",
    "A monkey climbs up the tree, grabs a banana and eats it.",
    "The lights turn off, the screen goes dark, and the music stops.",
    "She rotates the cube clockwise, then moves it to the left side of the desk.",
    "The dog is wearing a yellow collar and it is wagging its tail happily.",
    "People walk through the market carrying bags of fruit and vegetables.",
    "A train arrives at the station and passengers step off the platform.",
    "The man is holding a phone in his right hand and a coffee in his left hand.",
    "Snow is falling on the mountain and a skier slides down the slope.",
    "A child draws a house with a blue roof and a brown door on paper.",
    "The scene changes from a bright beach to a dark forest at night.",
    "A cook flips the pancake in the pan and it lands back perfectly.",
    "Three ducks swim in a line across the pond behind their mother.",
    "The object moves up, then down, then it disappears behind the curtain.",
    "A woman in a white shirt is typing on a laptop in the office.",
    "The baby laughs as the father lifts him high into the air.",
    "Water drips from the tap into the sink, one drop at a time.",
    "A black and white cow is eating grass next to the farm fence.",
)

SAMPLE_QUESTIONS: tuple[str, ...] = (
    "What is the man doing in the video?",
    "What color is the car that stops at the light?",
    "How many people are in the room?",
    "Describe the video in detail.",
    "Where does the dog run after the ball is thrown?",
    "Why does the crowd cheer at the end of the clip?",
    "Question: What did the person do first?\nOptions:\n(A) Opened the door.\n(B) Sat on the "
    "chair.\n(C) Picked up the cup.\n(D) Turned off the light.\nOnly give the best option.",
    "Question: In which direction is the object moving?\nOptions:\n(A) Up.\n(B) Down.\n"
    "(C) Left.\n(D) Right.\nOnly give the best option.",
    "Which animal appears in the video?\nA. A cat.\nB. A dog.\nC. A horse.\nD. A bird.",
)


def training_corpus(placeholder: str = IMAGE_PLACEHOLDER) -> list[str]:
    """The full training text: :data:`CORPUS` plus every template of ``placeholder`` rendered with
    each question."""
    prompts = [t.render(q) for t in ALL_TEMPLATES.values() if t.placeholder == placeholder for q in SAMPLE_QUESTIONS]
    return list(CORPUS) + list(SAMPLE_QUESTIONS) + prompts


def _train(vocab_size: int, style: TokenizerStyle) -> Tokenizer:
    """Train the byte-level BPE on :func:`training_corpus` (the first ids are ``style.trained``)."""
    tokenizer = Tokenizer(models.BPE(unk_token=style.unk))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(style.trained),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(style.placeholder), trainer=trainer)
    return tokenizer


def _finish(tokenizer: Tokenizer, style: TokenizerStyle) -> None:
    """Add the style's added tokens as special tokens and, with a BOS, a post-processor that
    prepends it."""
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in style.added])
    if style.bos is not None:
        bos, bos_id = style.bos, tokenizer.token_to_id(style.bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )


def _added_token_entry(content: str) -> dict[str, Any]:
    """One ``added_tokens_decoder`` entry of tokenizer_config.json, as HF writes it."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def _tokenizer_config(tokenizer: Tokenizer, model_max_length: int, style: TokenizerStyle) -> dict[str, Any]:
    """The contents of tokenizer_config.json."""
    specials = (*style.trained, *style.added)
    decoder = {str(tokenizer.token_to_id(t)): _added_token_entry(t) for t in specials}
    return {
        "add_bos_token": style.bos is not None,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": style.bos,
        "clean_up_tokenization_spaces": False,
        "eos_token": style.eos,
        "model_max_length": model_max_length,
        "pad_token": style.pad,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": style.unk,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as stable, indented JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_tokenizer(
    out_dir: Path, *, vocab_size: int = 512, model_max_length: int = MODEL_MAX_LENGTH, style: str = "llama"
) -> dict:
    """Train the tiny tokenizer and write a HF tokenizer folder into ``out_dir``.

    ``vocab_size`` is the BPE trainer's target, before the added ``<image>`` and ``<pad>``.
    Writes ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
    ``added_tokens.json``; returns ``{"vocab_size", "image_token_id", "bos_token_id",
    "eos_token_id", "pad_token_id"}`` where ``vocab_size`` includes the added tokens.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = STYLES[style]
    tokenizer = _train(vocab_size, kind)
    _finish(tokenizer, kind)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(tokenizer, model_max_length, kind))
    specials = {"bos_token": kind.bos, "eos_token": kind.eos, "pad_token": kind.pad, "unk_token": kind.unk}
    _write_json(out_dir / "special_tokens_map.json", {k: v for k, v in specials.items() if v is not None})
    _write_json(out_dir / "added_tokens.json", {t: tokenizer.token_to_id(t) for t in kind.added})
    return {
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "image_token_id": tokenizer.token_to_id(IMAGE_PLACEHOLDER),
        "bos_token_id": None if kind.bos is None else tokenizer.token_to_id(kind.bos),
        "eos_token_id": tokenizer.token_to_id(kind.eos),
        "pad_token_id": tokenizer.token_to_id(kind.pad),
        **({"video_token_id": tokenizer.token_to_id(VIDEO_PLACEHOLDER)} if VIDEO_PLACEHOLDER in kind.added else {}),
    }
