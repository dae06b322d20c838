"""The contract between exporter, runtime and tests: graph names, tensor names, dtypes, symbolic
dimensions, and the layout of an export folder. Plain data; imports nothing heavy.

    pixel_values [T,3,H,W] --encoder--> visual_features [T,L,C]
    visual_features --merger--> merged_tokens [T*L,C] (first num_merged rows used), num_merged,
                                group_sizes [2T], window_sizes [T], token_of_cell [T,L]
    input_ids, image_pos, merged_tokens, num_merged --decoder_prefill (layers 0..K)-->
        hidden_k [S,C], visual_scores [M], present.0..K
    visual_scores, group_sizes, image_pos, input_ids --select--> keep_index [S] (first num_kept used), num_kept
    hidden_k, keep_index, past.0..K --decoder_late (layers K+1..)--> logits [V], present.0..N-1 [.., S', ..]
    input_id, position, past.0..N-1 --decode_step--> logits [V], present.0..N-1 [.., P+1, ..]

A graph's ``present.i.*`` outputs feed the next graph's ``past_key_values.i.*`` inputs; the
runtime binds them by these names. Every KV tensor is ``[H_kv, length, head_dim]``.
"""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST = "manifest.json"
GRAPH_DIR = "graphs"
FORMAT_VERSION = 1

# Files copied from the checkpoint into an export, so the runtime needs nothing else.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: ``dims`` are ints (fixed) or names of symbolic dimensions.

    ``dtype`` "float" follows the export's ``--dtype`` (float32 or float16); "float32", "int64" and
    "bool" are fixed whatever the export dtype.
    """

    name: str
    dtype: str
    dims: tuple[str | int, ...]


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    doc: str
    custom_ops: tuple[str, ...] = ()  # prunevid ops used (names from prunevid.plugins.ops)

    @property
    def file(self) -> str:
        return f"{GRAPH_DIR}/{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def past_key(i: int) -> str:
    return f"past_key_values.{i}.key"


def past_value(i: int) -> str:
    return f"past_key_values.{i}.value"


def present_key(i: int) -> str:
    return f"present.{i}.key"


def present_value(i: int) -> str:
    return f"present.{i}.value"


def past_names(layers: range) -> list[str]:
    return [n for i in layers for n in (past_key(i), past_value(i))]


def present_names(layers: range) -> list[str]:
    return [n for i in layers for n in (present_key(i), present_value(i))]


def as_past(name: str) -> str:
    """``present.i.key`` -> ``past_key_values.i.key``."""
    return name.replace("present.", "past_key_values.", 1)


@dataclass(frozen=True)
class Geometry:
    """The sizes that fix the graphs of one export."""

    frames: int  # T, fixed per export (the runtime always samples T frames)
    tokens_per_frame: int  # L
    hidden: int  # C
    image_size: int  # H = W
    num_layers: int
    select_layer: int  # K
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def max_visual(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def groups(self) -> int:
        return 2 * self.frames


def _kv(names: list[str], length: str, g: Geometry) -> tuple[Tensor, ...]:
    return tuple(Tensor(n, "float", (g.kv_heads, length, g.head_dim)) for n in names)


def graphs(g: Geometry) -> dict[str, Graph]:
    """Every graph of an export with geometry ``g``, in execution order."""
    early, every = range(g.select_layer + 1), range(g.num_layers)
    t, l, c = g.frames, g.tokens_per_frame, g.hidden
    return {
        "encoder": Graph(
            "encoder",
            (Tensor("pixel_values", "float", ("frames", 3, g.image_size, g.image_size)),),
            (Tensor("visual_features", "float", ("frames", l, c)),),
            "CLIP layer -2 without CLS, projector, per-frame average pooling.",
        ),
        "merger": Graph(
            "merger",
            (Tensor("visual_features", "float", (t, l, c)),),
            (
                Tensor("merged_tokens", "float", (t * l, c)),
                Tensor("num_merged", "int64", ()),
                Tensor("group_sizes", "int64", (2 * t,)),
                Tensor("window_sizes", "int64", (t,)),
                Tensor("token_of_cell", "int64", (t, l)),
            ),
            "PruneVid stages A-C; rows past num_merged are zero; groups in token order; "
            "token_of_cell[t, l] = merged row that absorbed frame t's grid cell l.",
            ("PvDpcKnn",),
        ),
        "decoder_prefill": Graph(
            "decoder_prefill",
            (
                Tensor("input_ids", "int64", ("text_len",)),
                Tensor("image_pos", "int64", ()),
                Tensor("merged_tokens", "float", ("visual_rows", c)),
                Tensor("num_merged", "int64", ()),
            ),
            (
                Tensor("hidden_k", "float", ("seq", c)),
                Tensor("visual_scores", "float32", ("merged",)),
                *_kv(present_names(early), "seq", g),
            ),
            "Layers 0..K on the full prompt; per-visual-token importance from layer K.",
        ),
        "select": Graph(
            "select",
            (
                Tensor("visual_scores", "float32", ("merged",)),
                Tensor("group_sizes", "int64", (2 * t,)),
                Tensor("image_pos", "int64", ()),
                Tensor("input_ids", "int64", ("text_len",)),
            ),
            (Tensor("keep_index", "int64", ("seq",)), Tensor("num_kept", "int64", ())),
            "floor(alpha * n) per group (PvGroupTopK); all text positions kept; ascending; "
            "fixed size S: the first num_kept entries are kept positions, the rest is the pad value S.",
            ("PvGroupTopK",),
        ),
        "decoder_late": Graph(
            "decoder_late",
            (
                Tensor("hidden_k", "float", ("seq", c)),
                Tensor("keep_index", "int64", ("kept",)),
                *_kv(past_names(early), "seq", g),
            ),
            (Tensor("logits", "float", (g.vocab,)), *_kv(present_names(every), "kept", g)),
            "Gathers hidden states and the KV cache of layers 0..K, runs layers K+1.. at the kept positions.",
        ),
        "decode_step": Graph(
            "decode_step",
            (
                Tensor("input_id", "int64", (1,)),
                Tensor("position", "int64", (1,)),
                *_kv(past_names(every), "past", g),
            ),
            (Tensor("logits", "float", (g.vocab,)), *_kv(present_names(every), "past_plus_one", g)),
            "One token at position S + j over every layer's cache.",
        ),
    }


GRAPH_ORDER = ("encoder", "merger", "decoder_prefill", "select", "decoder_late", "decode_step")
