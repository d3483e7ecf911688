"""The docs cannot rot: every YAML block in the README and docs/ is checked against the config
schema, every config key is in the YAML reference, and every relative link resolves.

A YAML block is read as what it shows: a whole sync file (`syncs:`), project keys without syncs, a
sync's keys, alternatives of one key (`warehouse:` written three ways), run config (`ops:`), or a
Component's `defs.yaml`. A block of some other tool's YAML (a dbt profile, say) names its file on
its first line (`# profiles.yml`), so a typo in one of ours cannot pass as foreign.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rudder_sync.assets import DiffRunConfig, SyncRunConfig
from rudder_sync.config import (
    DESTINATION_KEYS,
    DeliveryConfig,
    GuardConfig,
    PartitionsConfig,
    ProjectConfig,
    SyncConfig,
    TriggerConfig,
    UniqueKeyLoader,
    parse_config,
)
from rudder_sync.errors import RudderSyncError
from rudder_sync.warehouses.settings import SETTINGS

from .helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REFERENCE = REPO / "docs" / "configuration.md"
WAREHOUSE_REFERENCE = REPO / "docs" / "warehouses.md"

PROJECT_KEYS = set(ProjectConfig.model_fields) - {"source"}
SYNC_KEYS = set(SyncConfig.model_fields) - {"name"}
RUN_CONFIG = {"diff": DiffRunConfig, "events": SyncRunConfig}
FOREIGN_FILE = re.compile(r"^#\s*(\S+\.ya?ml)\b")
OURS = {"rudder_sync.yaml", "defs.yaml"}
# a sync's required keys, for a block that shows only some of a sync's keys
BASE_SYNC = {"model": "select id, user_id from users", "primary_key": "id", "type": "track"}
TRACK_NEEDS = {"user_id": "user_id", "events": {"added": "Signed Up"}}


def yaml_blocks() -> Iterator[tuple[str, str]]:
    for doc in DOCS:
        text = doc.read_text()
        for match in re.finditer(r"(?ms)^( *)```ya?ml[^\n]*\n(.*?)^\1```", text):
            line = text[: match.start()].count("\n") + 1
            yield f"{doc.relative_to(REPO)}:{line}", textwrap.dedent(match.group(2))


BLOCKS = list(yaml_blocks())


def alternatives(text: str) -> list[str]:
    """A block that writes one top-level key several ways (`warehouse:` per engine) is several
    documents; any other block is one."""
    documents: list[list[str]] = [[]]
    seen: set[str] = set()
    for line in text.splitlines():
        key = re.match(r"^([A-Za-z_][\w.]*):", line)
        if key and key.group(1) in seen:
            documents.append([])
            seen = set()
        if key:
            seen.add(key.group(1))
        documents[-1].append(line)
    return ["\n".join(lines) for lines in documents if any(lines)]


def env_refs(value: Any, parent: str = "") -> Iterator[tuple[str, str]]:
    """(the key that holds an `{env: NAME}`, NAME) everywhere in a parsed block."""
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            yield parent, value["env"]
        for key, item in value.items():
            yield from env_refs(item, str(key))
    elif isinstance(value, list):
        for item in value:
            yield from env_refs(item, parent)


def env_value(key: str) -> str:
    """A value of the right form for the key that reads the variable."""
    if key == "data_plane_url":
        return "https://example.dataplane.rudderstack.com"
    if key == "url":
        return "postgresql://reader@db.example.com:5432/analytics"
    if key in {"port", "smtp_port"}:
        return "5432"
    return "value-from-the-environment"


def write_manifest(raw: dict, base: Path) -> None:
    """A dbt manifest holding the models the block names, where its `dbt:` key looks for it."""
    dbt = raw["dbt"]
    if "manifest" in dbt:
        path = base / dbt["manifest"]
    else:
        path = base / dbt.get("project_dir", ".") / "target" / "manifest.json"
    syncs = raw.get("syncs") or {}
    names = set(re.findall(r"ref\(\s*'(\w+)'", json.dumps(syncs)))
    names |= {s["model"]["dbt"] for s in syncs.values() if isinstance(s.get("model"), dict)}
    warehouse = raw.get("warehouse")  # dbt-duckdb names the database after the file
    database = Path(warehouse).stem if isinstance(warehouse, str) else "analytics"
    nodes = {
        f"model.analytics.{name}": {
            "unique_id": f"model.analytics.{name}",
            "name": name,
            "resource_type": "model",
            "package_name": "analytics",
            "database": database,
            "schema": "main",
            "alias": name,
            "config": {"materialized": "table", "enabled": True},
            "relation_name": f'"{database}"."main"."{name}"',
        }
        for name in names
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"metadata": {"project_name": "analytics"}, "nodes": nodes, "child_map": {}}
    path.write_text(json.dumps(manifest))


def validate_project(raw: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, name in env_refs(raw):
        monkeypatch.setenv(name, env_value(key))
    base = tmp_path / "project"  # relative paths such as ../analytics stay inside tmp_path
    base.mkdir(exist_ok=True)
    if isinstance(raw.get("dbt"), dict):
        write_manifest(raw, base)
    parse_config(raw, base_dir=base)


def as_project(doc: dict) -> dict | None:
    """The block as a whole sync file, or None when it is not config of ours."""
    if "syncs" in doc:
        return doc
    if set(doc) <= PROJECT_KEYS:
        sync = {**BASE_SYNC, **TRACK_NEEDS}
        return {**doc, "syncs": {"example": sync}}
    if set(doc) <= SYNC_KEYS:
        sync = {**BASE_SYNC, **doc}
        if sync["type"] == "track":
            sync = {**TRACK_NEEDS, **sync}
        if "partitions" in sync and "$partition_start" not in sync["model"]:
            sync["model"] += " where ts >= $partition_start and ts < $partition_end"
        return {"syncs": {"example": sync}}
    return None


def check_run_config(doc: dict) -> None:
    for op, body in doc["ops"].items():
        sync, _, step = op.rpartition("__")
        assert sync and step in RUN_CONFIG, f"run config for an unknown step: {op}"
        unknown = set((body or {}).get("config", {})) - set(RUN_CONFIG[step].model_fields)
        assert not unknown, f"{op}: unknown run config {sorted(unknown)}"


@pytest.mark.parametrize(("where", "text"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_yaml_block_is_valid_config(
    where: str, text: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    foreign = FOREIGN_FILE.match(first)
    if foreign and foreign.group(1) not in OURS:
        yaml.safe_load(text)  # still YAML
        return
    for document in alternatives(text):
        doc = yaml.load(document, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        assert isinstance(doc, dict), f"{where}: not a mapping"
        if "ops" in doc:
            check_run_config(doc)
            continue
        if doc.get("type") == "rudder_sync.RudderstackSyncComponent":
            attributes = yaml.safe_load(
                re.sub(r"\{\{[^}]*\}\}", str(tmp_path), yaml.safe_dump(doc["attributes"]))
            )
            validate_project(attributes, monkeypatch, tmp_path)
            continue
        project = as_project(doc)
        assert project is not None, (
            f"{where}: keys {sorted(doc)} are neither a sync file's, a project's nor a sync's; "
            "a block of another tool's YAML names its file on its first line (# profiles.yml)"
        )
        try:
            validate_project(project, monkeypatch, tmp_path)
        except RudderSyncError as exc:
            pytest.fail(f"{where}: {exc}")


def config_keys() -> dict[str, set[str]]:
    """Every key a sync file can hold, by the reference page that must name it."""
    nested = {
        *DeliveryConfig.model_fields,
        *DESTINATION_KEYS,
        *GuardConfig.model_fields,
        *PartitionsConfig.model_fields,
        *TriggerConfig.model_fields,
    }
    warehouse = {
        info.alias or name for cls in SETTINGS.values() for name, info in cls.model_fields.items()
    }
    return {"configuration.md": PROJECT_KEYS | SYNC_KEYS | nested, "warehouses.md": warehouse}


def documented(key: str) -> str:
    """`key`, a YAML line `key: ...` (also inline, `{key: ...}`), or a key in a `{a, key, b}`."""
    k = re.escape(key)
    return rf"`{k}`|^\s*{k}:|[{{ ]{k}:|`\{{[^`]*\b{k}\b[^`]*\}}`"


def test_every_config_key_is_in_the_yaml_reference() -> None:
    missing = []
    for page, keys in config_keys().items():
        text = (REPO / "docs" / page).read_text()
        missing += [
            f"{page}: {key}" for key in sorted(keys) if not re.search(documented(key), text, re.M)
        ]
    assert not missing, f"config keys missing from the YAML reference: {missing}"


def links() -> Iterator[tuple[Path, str]]:
    for doc in DOCS:
        text = re.sub(r"(?ms)^```.*?^```", "", doc.read_text())  # not inside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not target.startswith(("http://", "https://", "mailto:")):
                yield doc, target


def anchors(page: Path) -> set[str]:
    found = set()
    for heading in re.findall(r"(?m)^#{1,6} (.*)$", page.read_text()):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc, target in links():
        path, _, anchor = target.partition("#")
        page = (doc.parent / path).resolve() if path else doc
        if not page.exists():
            broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
        elif anchor and page.suffix == ".md" and anchor not in anchors(page):
            broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
