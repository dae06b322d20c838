"""The official PLLaVA / PruneVid evaluation prompts, as data.

Each :class:`Template` holds the fields of one official ``Conversation`` (PLLaVA's
``tasks/eval/eval_utils.py``) plus the post-query and answer prompts that the official eval script
of that benchmark passes in, and :meth:`Template.render` assembles them the way the official
``user_query`` / ``assistant_response`` / ``get_prompt`` calls do for a single question about one
video. The rendered text is therefore identical, character for character, to the prompt the
official code hands to its processor (the tests pin every template's text literally).

Pure standard library: the CLI imports this module for its help text, and it must stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunevid.errors import PromptError

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDERS = {IMAGE_PLACEHOLDER: "image_token_index", VIDEO_PLACEHOLDER: "video_token_index"}
"""Each prompt placeholder and the config.json field holding its token id."""

PLLAVA = "magic-research/PLLaVA@5ea077dbec00fcb0cdf870068fef915bb6b9eeb9"
PRUNEVID = "Visual-AI/PruneVid@a7fd71189dd8eb98117a02639dacc642c157da4e"

SYSTEM_MVBENCH = (
    "Carefully watch the video and pay attention to the cause and sequence of events, "
    "the detail and movement of objects, and the action and pose of persons. "
    "Based on your observations, select the best option that accurately addresses the question.\n"
)
SYSTEM_VIDEOMME = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\n"
)
# No space after "natural language." in the official string: the two literals are juxtaposed.
SYSTEM_VCG = (
    "You are Video-ChatGPT, a large vision-language assistant. "
    "You are able to understand the video content that the user provides, and assist the user "
    "with a variety of tasks using natural language."
    "Follow the instructions carefully and explain your answers in detail based on the provided video."
)
PRE_QUERY_VIDEOQA = (
    "The input consists of a sequence of key frames from a video. Answer the question concisely "
    "first and followed by significant events, characters, or objects that appear throughout the "
    "frames. Question:"
)
POST_QUERY_MULTIPLE_CHOICE = "\nOnly give the best option."
ANSWER_MULTIPLE_CHOICE = "Best option:("


@dataclass(frozen=True)
class Template:
    """One official conversation, for one question about one video.

    Attributes (official names in brackets):
        name: the ``--template`` name.
        conversation: the official object, e.g. ``conv_eval_mvbench``.
        system: system prompt [``system``]; ``""`` means none (and no separator after it).
        roles: user and assistant role strings [``roles``], e.g. ``("USER: ", "ASSISTANT:")``.
        seps: the separator after a user turn and after an assistant turn [``sep``].
        mm_token: the video placeholder as it appears in the prompt [``mm_token``].
        mm_alone: the placeholder is a user turn of its own [``MM_ALONE``], else it is put in
            front of the question [``MM_INTERLEAF``].
        pre_query / post_query: text joined before / after the question with one space.
        answer_prompt: the start of the assistant's turn, if any.
        used_for: the benchmarks the official scripts run with it.
        source: where each part comes from (repository@commit:path).
        placeholder: the token the visual rows replace (``<image>``; ``<video>`` for OneVision).
        join: the text between the placeholder, the pre-query, the question and the post-query
            (one space in PLLaVA's conversations; nothing in ChatML, whose parts carry newlines).
    """

    name: str
    conversation: str
    system: str
    roles: tuple[str, str]
    seps: tuple[str, str]
    mm_token: str
    mm_alone: bool
    pre_query: str | None
    post_query: str | None
    answer_prompt: str | None
    used_for: str
    source: str
    placeholder: str = IMAGE_PLACEHOLDER
    join: str = " "

    def render(self, question: str) -> str:
        """The prompt text for ``question`` (the official prompt assembly, one video, one turn)."""
        user, assistant = self.roles
        query = question
        if self.post_query is not None:
            query = f"{query}{self.join}{self.post_query}"
        if self.pre_query is not None:
            query = f"{self.pre_query}{self.join}{query}"
        turns = []
        if self.mm_alone:
            turns.append((user, self.mm_token))
        else:  # the question never holds the placeholder (build_prompt refuses it)
            query = f"{self.mm_token}{self.join}{query}"
        turns.append((user, query))
        if self.answer_prompt is not None:
            turns.append((assistant, self.answer_prompt))
        sep = dict(zip(self.roles, self.seps))
        text = self.system + sep[user] if self.system else ""
        for i, (role, message) in enumerate(turns):
            text += role + message
            if i + 1 < len(turns):
                text += sep[role]
            elif role != assistant:  # the last turn is the user's: open the assistant's
                text += sep[role] + assistant
        return text


def _vicuna(name: str, conversation: str, system: str, *, mm_alone: bool = True,
            pre_query: str | None = None, post_query: str | None = None,
            answer_prompt: str | None = None, used_for: str, source: str) -> Template:
    """A conversation with PLLaVA's evaluation roles and separators (all four share them)."""
    return Template(name=name, conversation=conversation, system=system,
                    roles=("USER: ", "ASSISTANT:"), seps=(" ", "</s>"),
                    mm_token=f"{IMAGE_PLACEHOLDER}\n", mm_alone=mm_alone, pre_query=pre_query,
                    post_query=post_query, answer_prompt=answer_prompt, used_for=used_for,
                    source=source)


SYSTEM_QWEN = "You are a helpful assistant."
POST_QUERY_LMMS_EVAL_MC = "\nAnswer with the option's letter from the given choices directly."
LLAVA_NEXT = "LLaVA-VL/LLaVA-NeXT:llava/conversation.py (conv_qwen, registered as qwen_1_5)"


def _chatml(name: str, *, post_query: str | None = None, used_for: str, source: str) -> Template:
    """LLaVA-OneVision's conversation: ChatML with the ``qwen_1_5`` system prompt, the video
    placeholder on its own line at the start of the user turn, the question after it."""
    return Template(name=name, conversation="conv_qwen (qwen_1_5)",
                    system=f"<|im_start|>system\n{SYSTEM_QWEN}",
                    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), seps=("<|im_end|>\n", "<|im_end|>\n"),
                    mm_token=f"{VIDEO_PLACEHOLDER}\n", mm_alone=False, pre_query=None, post_query=post_query,
                    answer_prompt=None, used_for=used_for, source=source, placeholder=VIDEO_PLACEHOLDER, join="")


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        _vicuna(
            "mvbench", "conv_eval_mvbench", SYSTEM_MVBENCH,
            post_query=POST_QUERY_MULTIPLE_CHOICE, answer_prompt=ANSWER_MULTIPLE_CHOICE,
            used_for="MVBench, EgoSchema (multiple choice)",
            source=f"{PLLAVA}:tasks/eval/eval_utils.py (conv_eval_mvbench, same in {PRUNEVID}); "
                   f"post-query and answer prompts: {PLLAVA}:tasks/eval/mvbench/pllava_eval_mvbench.py "
                   f"and {PRUNEVID}:tasks/eval/egoshcema/pllava_eval_egoschema.py",
        ),
        _vicuna(
            "videomme", "conv_eval_videomme", SYSTEM_VIDEOMME,
            post_query=POST_QUERY_MULTIPLE_CHOICE, answer_prompt=ANSWER_MULTIPLE_CHOICE,
            used_for="Video-MME (multiple choice)",
            source=f"{PRUNEVID}:tasks/eval/eval_utils.py (conv_eval_videomme; not in PLLaVA); "
                   f"post-query and answer prompts: {PRUNEVID}:tasks/eval/videomme/pllava_eval_videomme.py "
                   "(stored there only as bytecode; read from its copy in "
                   "duykhang2103/Mate@0430562771d1e7b4f9931200d857030413374e00)",
        ),
        _vicuna(
            "vcg", "conv_eval_vcg", SYSTEM_VCG,
            used_for="Video-ChatGPT benchmark (open-ended generation); the default",
            source=f"{PLLAVA}:tasks/eval/eval_utils.py (conv_eval_vcg, same in {PRUNEVID}); "
                   f"no post-query or answer prompt: {PLLAVA}:tasks/eval/vcgbench/pllava_eval_vcgbench.py",
        ),
        _vicuna(
            "videoqabench", "conv_eval_videoqabench", "", mm_alone=False,
            pre_query=PRE_QUERY_VIDEOQA, post_query="\n", answer_prompt="\nAnswer: In the video,",
            used_for="MSVD-QA, MSRVTT-QA, ActivityNet-QA, TGIF-QA (open-ended short answers)",
            source=f"{PLLAVA}:tasks/eval/eval_utils.py (conv_eval_videoqabench with its own pre-, "
                   f"post-query and answer prompts, same in {PRUNEVID}); "
                   f"{PLLAVA}:tasks/eval/videoqabench/pllava_eval_videoqabench.py passes them in",
        ),
    )
}

ONEVISION_TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        _chatml(
            "ov-chat",
            used_for="LLaVA-OneVision, free-form questions; the OneVision default",
            source=f"{LLAVA_NEXT}; transformers' llava_onevision conversion script (ChatML, <video> then \\n)",
        ),
        _chatml(
            "ov-mc", post_query=POST_QUERY_LMMS_EVAL_MC,
            used_for="LLaVA-OneVision multiple choice (MVBench, Video-MME, EgoSchema) as run by lmms-eval "
                     "in the peer papers (HoliTom, DyCoke, VidCom2)",
            source=f"{LLAVA_NEXT}; post-prompt: EvolvingLMMs-Lab/lmms-eval task configs "
                   "(lmms_eval_specific_kwargs.default.post_prompt), joined to the question with a newline",
        ),
    )
}
"""LLaVA-OneVision's conversations (ChatML, ``<video>``); :data:`TEMPLATES` holds PLLaVA's."""

ALL_TEMPLATES: dict[str, Template] = {**TEMPLATES, **ONEVISION_TEMPLATES}

# Free-form questions: Video-ChatGPT's open-ended conversation. It adds no answer prefix (the
# videoqabench one forces "Answer: In the video," and a short answer), and it is the open-ended
# prompt PruneVid itself evaluates (scripts/eval.sh, with the pllava-vcg settings).
DEFAULT_TEMPLATE = "vcg"


def get_template(name: str) -> Template:
    """The template called ``name``; :class:`PromptError` listing the known names otherwise."""
    try:
        return ALL_TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(ALL_TEMPLATES))
        raise PromptError(f"unknown prompt template {name!r} (known: {known})") from None
