"""The graph chain, written once against a runner: pixels and prompt ids in, tokens out. No torch.

A runner is anything with ``run(graph, feeds) -> outputs``, both keyed by the names of
:mod:`prunevid.spec` and holding numpy arrays: ONNX Runtime in the runtime
(:class:`prunevid.runtime.backend.OrtBackend`), the torch stages for export tracing and ``check``
(:class:`prunevid.exporter.runners.TorchRunner`).

    pixels --encoder--> features [T,L,C] --merger--> merged [M,C] + group layout   (not for "none")
    ids --embed--> [P+1+Q,C]; host splice at image_pos --> x [S,C]
    x --decoder_early (layers 0..K, empty cache)--> hidden [S,C], new K/V rows, layer-K q/k
      prunevid: --score--> key_scores [S] --select--> keep [S'];  host: caches[:S'] = rows[keep]
      merge/none: caches[:S] = rows (no score, no select, no gather)
    hidden[keep] at positions keep --decoder_late--> logits, new rows --> caches[:S']
    decode step j: embed(token) --decoder_early--> --decoder_late--> logits; one row per layer
      written at cache row S'+j; the token sits at position S+j (the unpruned length)

The KV cache is one buffer per layer and K/V, ``[H_kv, R, d]``, allocated once per answer with
``R = S' + max_new_tokens - 1``; graphs only read it (under a length mask) and return new rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from prunevid import spec


class Runner(Protocol):
    """Runs one graph of :func:`prunevid.spec.graphs` by name."""

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class Visual:
    """Visual rows entering the LLM: ``tokens [M, C]`` and, when merged, the group layout."""

    tokens: np.ndarray
    groups: np.ndarray | None = None  # [2T] token-order group sizes
    windows: np.ndarray | None = None  # [T] frames per segment, zero padded
    token_of_cell: np.ndarray | None = None  # [T, L] merged row of each frame's grid cell

    def layout(self) -> dict[str, np.ndarray] | None:
        """The merger's layout outputs by spec name (None for the unmerged baseline)."""
        if self.groups is None:
            return None
        return {"group_sizes": self.groups, "window_sizes": self.windows, "token_of_cell": self.token_of_cell}

    @property
    def count(self) -> int:
        return int(self.tokens.shape[0])


MAPPED_BYTES = 1 << 20


def zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.zeros``, as an anonymous mapping from :data:`MAPPED_BYTES` on (zero pages until written,
    unmapped when the last view goes)."""
    import mmap

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < MAPPED_BYTES:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


class KVCache:
    """Fixed per-layer buffers ``[H_kv, R, d]``; rows ``0..length-1`` are valid.

    All of them are views of one block ``[2N, H_kv, R, d]``, an anonymous memory mapping (from
    :data:`MAPPED_BYTES` on): its pages appear as rows are written and go back to the OS when the
    answer ends. (A heap block was zeroed page by page up front and, once freed, stayed resident:
    glibc serves a large request from a freed heap chunk when one is big enough.)
    """

    def __init__(self, g: spec.Geometry, rows: int, dtype):
        self.layers = range(g.num_layers)
        names = spec.past_names(self.layers)
        self.block = zeros((len(names), g.kv_heads, rows, g.head_dim), dtype)  # [2N, H_kv, R, d]
        self.buffers = {name: self.block[i] for i, name in enumerate(names)}  # each C-contiguous
        self.length = 0
        self._feeds: dict[range, dict[str, np.ndarray]] = {}  # per layer range: the same buffers every step

    def feeds(self, layers: range) -> dict[str, np.ndarray]:
        if layers not in self._feeds:
            self._feeds[layers] = {name: self.buffers[name] for name in spec.past_names(layers)}
        return self._feeds[layers]

    def write(self, new_rows: list[np.ndarray], layers: range, rows: np.ndarray | None = None) -> None:
        """Write the new rows of ``layers`` (the graph's ``present.i.*`` outputs, in spec order) at
        ``length..``; ``rows`` picks which of them to keep (the compaction after selection)."""
        for buf, new in zip(self.feeds(layers).values(), new_rows, strict=True):  # new: [H_kv, n, d]
            new = new if rows is None else new[:, rows]  # [H_kv, n', d]
            buf[:, self.length : self.length + new.shape[1]] = new

    def advance(self, n: int) -> None:
        self.length += n


@dataclass
class State:
    """After the prompt: logits of its last row, the caches, and the position bookkeeping."""

    logits: np.ndarray  # [V]
    cache: KVCache
    seq_len: int  # S, the unpruned prompt length: decode step j sits at position S + j
    kept: int  # S', prompt rows in the cache
    visual_kept: int
    keep: np.ndarray  # [S'] the prompt positions kept after layer K, ascending


class Chain:
    """The encoder-to-token chain over any :class:`Runner`."""

    def __init__(self, runner: Runner, geometry: spec.Geometry, float_type=np.float32):
        self.runner, self.g, self.float_type = runner, geometry, float_type
        self.early, self.late = spec.early_layers(geometry), spec.late_layers(geometry)
        self.graphs = spec.graphs(geometry)
        g = geometry
        self._empty = {name: np.zeros((g.kv_heads, 1, g.head_dim), float_type)
                       for name in spec.past_names(range(g.num_layers))}  # one masked row: no cache yet

    def run(self, graph: str, *inputs: Any) -> list[np.ndarray]:
        """Graph ``graph`` on its inputs in spec order; its outputs in spec order."""
        g = self.graphs[graph]
        out = self.runner.run(graph, dict(zip(g.input_names, inputs, strict=True)))
        return [out[name] for name in g.output_names]

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """``[T, 3, S, S] -> [T, L, C]``."""
        return self.run("encoder", pixels)[0]

    def visual(self, features: np.ndarray, merge: bool) -> Visual:
        """Merged tokens, or the flattened encoder output for the baseline (no merger run)."""
        if not merge:
            return Visual(features.reshape(-1, features.shape[-1]))  # [T*L, C], frame-major
        merged, num, groups, windows, token_of_cell = self.run("merger", features)
        return Visual(merged[: int(np.asarray(num).reshape(()))], groups, windows, token_of_cell)  # [M, C]

    def _decoder(self, graph: str, layers: range, hidden, positions, cache: KVCache | None) -> list[np.ndarray]:
        """Outputs of a decoder graph; the last ``2 * len(layers)`` are the new K/V rows."""
        past = cache.feeds(layers) if cache is not None else {n: self._empty[n] for n in spec.past_names(layers)}
        length = np.asarray(cache.length if cache is not None else 0, dtype=np.int64)
        return self.run(graph, hidden, positions, length, *past.values())

    def prefill(self, ids: np.ndarray, image_pos: int, visual: Visual, select: bool, max_new_tokens: int) -> State:
        """The prompt through every layer; with ``select``, PruneVid's stage D after layer K.

        Then, when the runner has ``release()`` (ONNX Runtime: return freed heap pages to the OS), it
        is called once the prompt's activations and new rows are freed: otherwise they stay resident
        through the whole decode (measured on the ``bench`` export: 127 MB, the decode-time peak
        1.27x instead of 1.15x weights + KV)."""
        state = self._prefill(ids, image_pos, visual, select, max_new_tokens)
        self._release()
        return state

    def _release(self) -> None:
        release = getattr(self.runner, "release", None)
        if release is not None:
            release()

    def _prefill(self, ids: np.ndarray, image_pos: int, visual: Visual, select: bool, max_new_tokens: int) -> State:
        (embeds,) = self.run("embed", ids)  # [P+1+Q, C]
        x = np.concatenate([embeds[:image_pos], visual.tokens.astype(embeds.dtype), embeds[image_pos + 1 :]])  # [S, C]
        s, start, end = x.shape[0], image_pos, image_pos + visual.count
        positions = np.arange(s, dtype=np.int64)
        hidden, query, key, *early = self._decoder("decoder_early", self.early, x, positions, None)
        keep = None
        if select:
            (key_scores,) = self.run("score", query[:, end:], key)  # [S]: question rows vs every key
            padded, num_kept = self.run("select", np.ascontiguousarray(key_scores[start:end]), visual.groups,
                                        np.asarray(image_pos, dtype=np.int64), ids)  # [S] padded with S
            keep = padded[: int(np.asarray(num_kept).reshape(()))]  # [S']
        kept = s if keep is None else len(keep)
        cache = KVCache(self.g, kept + max(max_new_tokens - 1, 0), self.float_type)
        cache.write(early, self.early, keep)
        hidden = hidden if keep is None else hidden[keep]  # [S', C]
        logits, *late = self._decoder("decoder_late", self.late, hidden, positions if keep is None else keep, None)
        cache.write(late, self.late)
        cache.advance(kept)
        keep = np.arange(s, dtype=np.int64) if keep is None else keep
        return State(logits, cache, s, kept, visual.count - (s - kept), keep)

    def step(self, state: State, token: int, position: int) -> np.ndarray:
        """One decode step: ``token`` at ``position``; its rows go to the cache; returns logits ``[V]``."""
        (x,) = self.run("embed", np.asarray([token], dtype=np.int64))  # [1, C]
        pos = np.asarray([position], dtype=np.int64)
        hidden, _, _, *early = self._decoder("decoder_early", self.early, x, pos, state.cache)
        logits, *late = self._decoder("decoder_late", self.late, hidden, pos, state.cache)
        state.cache.write(early, self.early)
        state.cache.write(late, self.late)
        state.cache.advance(1)
        return logits

    def greedy(self, state: State, max_new_tokens: int, eos_id: int | None,
               on_token: Callable[[int], None] | None = None) -> Iterator[int]:
        """Greedy tokens; step ``j`` is fed at position ``S + j``. Stops after EOS.

        When the generator ends (or is closed), the runner's ``release()`` returns the heap the
        steps freed (measured on the ``bench`` export: 34 MB resident between answers otherwise)."""
        logits = state.logits
        try:
            for j in range(max_new_tokens):
                token = int(np.argmax(logits))
                if on_token is not None:
                    on_token(token)
                yield token
                if token == eos_id or j == max_new_tokens - 1:
                    return
                logits = self.step(state, token, state.seq_len + j)
        finally:
            del logits
            self._release()
