"""``prunevid prompt``: the exact prompt text and token ids the model sees for a question.

Reads only a checkpoint's ``config.json`` or an export's ``manifest.json``, and the tokenizer
files; never the weights or graphs, so it answers instantly on a 7B checkpoint. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunevid.errors import ArtifactError, ConfigError


@dataclass(frozen=True)
class PromptView:
    """What ``prunevid prompt`` reports."""

    template: str
    text: str
    input_ids: list[int]
    image_pos: int
    image_token_index: int
    tokens: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"template": self.template, "text": self.text, "input_ids": self.input_ids,
                "image_pos": self.image_pos, "image_token_index": self.image_token_index,
                "tokens": self.tokens}


def _source(model_dir: Path | None, engine_dir: Path | None) -> tuple[Path, int, str, tuple[int, ...]]:
    """Tokenizer folder, placeholder token id, default template and the ids after the visual
    block of a checkpoint or an export."""
    if (model_dir is None) == (engine_dir is None):
        raise ConfigError("pass exactly one of --model-dir DIR (checkpoint) or --engine-dir DIR (export)")
    if model_dir is not None:
        from prunevid.model.config import FAMILIES, read_config

        cfg = read_config(Path(model_dir))
        return Path(model_dir), cfg.placeholder_index, FAMILIES[cfg.family].template, cfg.after_visual_ids
    from prunevid.runtime.artifact import open_artifact

    artifact = open_artifact(engine_dir, verify=False)  # the manifest only; no graph is read
    model = artifact.manifest.get("model")
    index = model.get("image_token_index") if isinstance(model, dict) else None
    template = model.get("template") if isinstance(model, dict) else None
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(template, str):
        raise ArtifactError(
            f"{artifact.root / 'manifest.json'}: model.image_token_index and model.template must be "
            "an integer and a string; export again"
        )
    return artifact.root, index, template, tuple(model.get("after_visual_ids", ()))


def show_prompt(question: str, *, model_dir: str | Path | None = None, engine_dir: str | Path | None = None,
                template: str | None = None) -> PromptView:
    """The prompt for ``question`` as ``run`` would build it from ``model_dir`` or ``engine_dir``.

    ``template`` defaults to the export's template (``engine_dir``) or the default free-form one
    (``model_dir``), exactly as ``run`` chooses when ``--template`` is not given.
    """
    from prunevid.runtime.text import TextTokenizer, build_prompt

    folder, image_token_index, default, after_visual = _source(
        Path(model_dir) if model_dir is not None else None, Path(engine_dir) if engine_dir is not None else None
    )
    name = template or default
    tokenizer = TextTokenizer.from_dir(folder)
    prompt = build_prompt(tokenizer, question, name, image_token_index, after_visual)
    tokens = [tokenizer.tokenizer.id_to_token(i) or "<newline row>" for i in prompt.ids]
    return PromptView(template=name, text=prompt.text, input_ids=prompt.ids, image_pos=prompt.image_pos,
                      image_token_index=image_token_index, tokens=tokens)
