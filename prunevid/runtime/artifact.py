"""An export folder as the runtime sees it: the manifest, verified file by file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunevid import spec
from prunevid.errors import ArtifactError, read_json_object


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


def _check_file(path: Path, expected: str, what: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"export is missing {what} ({path.name}); export again")
    if sha256(path) != expected:
        raise ArtifactError(f"{what} ({path.name}) changed since export (sha256 mismatch); export again")


def open_artifact(root: str | Path, verify: bool = True) -> Artifact:
    """Read ``root/manifest.json`` and check every graph and support file against its sha256."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"export folder not found: {root}")
    path = root / spec.MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} has no {spec.MANIFEST}; is it an export folder?")
    manifest = read_json_object(path, ArtifactError)
    if manifest.get("format_version") != spec.FORMAT_VERSION:
        raise ArtifactError(f"{path} has format {manifest.get('format_version')}, this prunevid reads {spec.FORMAT_VERSION}")
    graphs = manifest.get("graphs", {})
    missing = [name for name in spec.GRAPH_ORDER if name not in graphs]
    if missing:
        raise ArtifactError(f"manifest lists no graph {missing[0]}; export again")
    if verify:
        for name in spec.GRAPH_ORDER:
            folder = (root / graphs[name]["file"]).parent
            for file, digest in graphs[name]["sha256"].items():
                _check_file(folder / file, digest, f"graph {name}")
        for file, digest in manifest.get("files", {}).items():
            _check_file(root / file, digest, f"file {file}")
    return Artifact(root, manifest)
