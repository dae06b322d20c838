"""An export folder as the runtime sees it: the manifest, verified file by file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from prunevid import spec
from prunevid.errors import ArtifactError, PruneVidError, one_line, read_json_object
from prunevid.fields import Field, check_fields, check_map, dataclass_fields, fail


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified export folder."""

    root: Path
    manifest: dict[str, Any]

    @property
    def geometry(self) -> spec.Geometry:
        return spec.Geometry(**self.manifest["geometry"])

    @property
    def prune(self) -> dict[str, Any]:
        """The PruneVid settings, K and frames taken from the geometry (their one stored value)."""
        g = self.manifest["geometry"]
        return {**self.manifest["prune"], **{name: g[name] for name in spec.GEOMETRY_SETTINGS}}

    def graph_path(self, name: str) -> Path:
        return self.root / self.manifest["graphs"][name]["file"]

    @property
    def disabled_optimizers(self) -> dict[str, tuple[str, ...]]:
        """ONNX Runtime optimizers each graph's session turns off (:func:`prunevid.spec.disabled_optimizers`)."""
        return spec.disabled_optimizers(self.manifest["graphs"])


DIGEST_FIELD = "manifest_sha256"
MAX_INDEX = 1 << 24  # ids, positions and sizes: far above any model, far below int overflow

# What the runtime reads from manifest.json. Blocks built from dataclasses follow them when fields
# are added (see prunevid.fields.dataclass_fields).
MANIFEST_FIELDS: tuple[Field, ...] = (
    Field("format_version", "int", required=True),
    Field("family", "str"),
    Field("dtype", "str", choices=("fp32", "fp16"), required=True),
    Field("opset", "int", 1, 1000),
    Field("geometry", "object", required=True),
    Field("graphs", "object", required=True),
    Field("files", "object", required=True),
    Field("prune", "object", required=True),
    Field("model", "object", required=True),
    Field("source", "object", required=True),
    Field("dims", "object"),
    Field("versions", "object"),
    Field(DIGEST_FIELD, "sha256", required=True),
)
MODEL_FIELDS: tuple[Field, ...] = (
    Field("image_token_index", "int", 0, MAX_INDEX, required=True),
    Field("max_position_embeddings", "int", 1, MAX_INDEX, required=True),
    Field("template", "str", required=True),
    Field("after_visual_ids", "list", item=Field("", "int", 0, MAX_INDEX)),
)
SOURCE_FIELDS: tuple[Field, ...] = (Field("path", "str", required=True), Field("sha256", "sha256", required=True))
GRAPH_FIELDS: tuple[Field, ...] = (
    Field("file", "path", required=True),
    Field("sha256", "object", required=True),
    Field("external_data", "bool"),
    Field("inputs", "list", item=Field("", "object")),
    Field("outputs", "list", item=Field("", "object")),
    Field("doc", "str"),
    Field(spec.ORT_DISABLED_OPTIMIZERS, "list", item=Field("", "str")),
)
_DIM = Field("", "int", 0, MAX_INDEX)
TENSOR_FIELDS: tuple[Field, ...] = (
    Field("name", "str", required=True),
    Field("dtype", "str"),
    Field("dims", "list", required=True),
    *(Field(k, "list", item=_DIM, required=True) for k in ("min", "opt", "max")),
)
GEOMETRY_FIELDS = dataclass_fields(spec.Geometry, {"layer": (0, MAX_INDEX)}, (1, MAX_INDEX))
# Files of an export the runtime reads besides the graphs: each must be hashed in ``files``.
REQUIRED_FILES = ("tokenizer.json", spec.PREPROCESSOR_FILE)
SUPPORT_FILES = (*spec.TOKENIZER_FILES, spec.PREPROCESSOR_FILE, "config.json")


def canonical_json(manifest: dict[str, Any]) -> bytes:
    """The manifest without its digest as canonical JSON (sorted keys, no spaces, UTF-8)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``root/manifest.json`` sealed with the sha256 of its canonical JSON (``manifest_sha256``),
    so that any later edit of a field, or removal of one, is detected when the folder is opened."""
    sealed = {**manifest, DIGEST_FIELD: hashlib.sha256(canonical_json(manifest)).hexdigest()}
    path = Path(root) / spec.MANIFEST
    path.write_text(json.dumps(sealed, indent=2) + "\n")
    return path


def _check_file(path: Path, expected: str, what: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"export is missing {what} ({path.name}); export again")
    if sha256(path) != expected:
        raise ArtifactError(f"{what} ({path.name}) changed since export (sha256 mismatch); export again")


class _ManifestReader:
    """Checks every field of one manifest the runtime reads; errors name the file and the field."""

    def __init__(self, root: Path, path: Path):
        self.root, self.real_root, self.file = root, root.resolve(), str(path)

    def fail(self, field: str, problem: str) -> NoReturn:
        fail(ArtifactError, self.file, field, problem)

    def inside(self, path: Path, label: str) -> Path:
        """``path`` with symlinks resolved, refused unless it stays inside the export folder."""
        real = path.resolve()
        if not real.is_relative_to(self.real_root):
            self.fail(label, f"points outside the export folder ({real})")
        return path

    def read(self, manifest: dict[str, Any]) -> list[tuple[Path, str, str]]:
        """Check ``manifest``; returns ``(path, sha256, what)`` of every file it protects."""
        top = check_fields(manifest, MANIFEST_FIELDS, self.file, ArtifactError)
        if top["format_version"] != spec.FORMAT_VERSION:
            self.fail("format_version", f"is {top['format_version']}, this prunevid reads {spec.FORMAT_VERSION}; export again")
        geometry = check_fields(top["geometry"], GEOMETRY_FIELDS, self.file, ArtifactError, "geometry.")
        unknown = sorted(set(top["geometry"]) - {f.name for f in fields(spec.Geometry)})
        if unknown:
            self.fail(f"geometry.{unknown[0]}", "is not a known field")
        try:
            spec.Geometry(**top["geometry"])
        except (TypeError, ValueError) as exc:
            self.fail("geometry", f"is invalid: {one_line(exc)}")
        if geometry["layer"] >= geometry["num_layers"]:
            self.fail("geometry.layer", f"{geometry['layer']} is not below geometry.num_layers {geometry['num_layers']}")
        model = check_fields(top["model"], MODEL_FIELDS, self.file, ArtifactError, "model.")
        if model["image_token_index"] >= geometry["vocab"]:
            self.fail("model.image_token_index", f"{model['image_token_index']} is outside the vocabulary ({geometry['vocab']})")
        self.prune({**top["prune"], **{name: geometry[name] for name in spec.GEOMETRY_SETTINGS}})
        check_fields(top["source"], SOURCE_FIELDS, self.file, ArtifactError, "source.")
        files = self.graphs(top["graphs"])
        return files + self.support_files(top["files"])

    def prune(self, data: dict[str, Any]) -> None:
        from prunevid.config import PruneConfig

        check_fields(data, PRUNE_FIELDS, self.file, ArtifactError, "prune.")
        try:
            PruneConfig.from_json(data)
        except (PruneVidError, TypeError, ValueError, KeyError) as exc:
            self.fail("prune", f"is invalid: {one_line(exc)}")

    def graphs(self, graphs: dict[str, Any]) -> list[tuple[Path, str, str]]:
        out = []
        for name in spec.GRAPH_ORDER:
            if name not in graphs:
                self.fail(f"graphs.{name}", "is missing; export again")
            label = f"graphs.{name}."
            entry = check_fields(graphs[name], GRAPH_FIELDS, self.file, ArtifactError, label)
            for key in ("inputs", "outputs"):
                for i, tensor in enumerate(entry.get(key, [])):
                    check_fields(tensor, TENSOR_FIELDS, self.file, ArtifactError, f"{label}{key}[{i}].")
            graph = self.inside(self.root / entry["file"], label + "file")
            hashes = check_map(entry["sha256"], Field("", "path"), Field("", "sha256"), self.file, ArtifactError,
                               label + "sha256", non_empty=True)
            if graph.name not in hashes:
                self.fail(label + "sha256", f"does not list the graph file {graph.name}")
            for file, digest in hashes.items():
                out.append((self.inside(graph.parent / file, f"{label}sha256[{file}]"), digest, f"graph {name}"))
        return out

    def support_files(self, files: dict[str, Any]) -> list[tuple[Path, str, str]]:
        check_map(files, Field("", "path"), Field("", "sha256"), self.file, ArtifactError, "files")
        for name in SUPPORT_FILES:
            if name not in files and (name in REQUIRED_FILES or (self.root / name).exists()):
                self.fail("files", f"does not list {name}; export again")
        return [(self.inside(self.root / f, f"files[{f}]"), digest, f"file {f}") for f, digest in files.items()]

    def check_digest(self, manifest: dict[str, Any]) -> None:
        if hashlib.sha256(canonical_json(manifest)).hexdigest() != manifest[DIGEST_FIELD]:
            self.fail(DIGEST_FIELD, "does not match the manifest's content (edited after export?); export again")


def _prune_fields() -> tuple[Field, ...]:
    from prunevid.config import PruneConfig

    return dataclass_fields(PruneConfig, {}, (-MAX_INDEX, MAX_INDEX))


PRUNE_FIELDS = _prune_fields()


def open_artifact(root: str | Path, verify: bool = True) -> Artifact:
    """Read ``root/manifest.json``, check every field the runtime reads, its digest and that every
    path stays inside ``root``; with ``verify``, also check every graph and support file against
    its sha256. Any problem raises :class:`ArtifactError` naming the file and the field."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"export folder not found: {root}")
    path = root / spec.MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} has no {spec.MANIFEST}; is it an export folder?")
    manifest = read_json_object(path, ArtifactError)
    reader = _ManifestReader(root, path)
    protected = reader.read(manifest)
    reader.check_digest(manifest)
    if verify:
        for file, digest, what in protected:
            _check_file(file, digest, what)
    return Artifact(root, manifest)
