"""The release workflow (.github/workflows/release.yml) is not run here (no registry, no
buildx); these tests keep it loadable and keep its tag rules and platforms what the docs
promise: `x.y.z`, `x.y` and `latest` from a `v*` tag, `edge` from main, linux/amd64 and
linux/arm64, one image per Dockerfile target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install -r tests/requirements.txt)")

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
TARGETS = {"all-in-one", "core", "api", "web"}


def load() -> dict[str, Any]:
    # PyYAML reads the bare key `on` as the boolean True (YAML 1.1).
    doc = yaml.safe_load(WORKFLOW.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def job() -> dict[str, Any]:
    jobs = load()["jobs"]
    assert len(jobs) == 1, f"expected one image job, got {sorted(jobs)}"
    return next(iter(jobs.values()))


def step(uses_prefix: str) -> dict[str, Any]:
    found = [s for s in job()["steps"] if str(s.get("uses", "")).startswith(uses_prefix)]
    assert len(found) == 1, f"expected one step using {uses_prefix}, got {len(found)}"
    return found[0]


def test_marked_as_not_run_here():
    head = WORKFLOW.read_text().splitlines()[0]
    assert "NOT RUN" in head, f"the first line must say the workflow is not run here: {head!r}"


def test_triggers_on_version_tags_and_main():
    on = load()["on"]
    assert on["push"]["tags"] == ["v*"]
    assert on["push"]["branches"] == ["main"]


def test_one_image_per_dockerfile_target():
    assert set(job()["strategy"]["matrix"]["target"]) == TARGETS
    build = step("docker/build-push-action@")["with"]
    assert build["file"] == "docker/Dockerfile"
    assert build["target"] == "${{ matrix.target }}"
    dockerfile = REPO / "docker" / "Dockerfile"
    if dockerfile.exists():
        stages = {
            line.split()[-1].lower()
            for line in dockerfile.read_text().splitlines()
            if line.upper().startswith("FROM ") and " AS " in line.upper()
        }
        assert TARGETS <= stages, f"docker/Dockerfile lacks targets {TARGETS - stages}"


def test_builds_amd64_and_arm64_with_buildx():
    step("docker/setup-buildx-action@")
    step("docker/setup-qemu-action@")
    platforms = step("docker/build-push-action@")["with"]["platforms"].split(",")
    assert sorted(p.strip() for p in platforms) == ["linux/amd64", "linux/arm64"]


def test_tag_rules():
    meta = step("docker/metadata-action@")
    assert job()["steps"].index(meta) < job()["steps"].index(step("docker/build-push-action@"))
    rules = [line.strip() for line in meta["with"]["tags"].splitlines() if line.strip()]
    # x.y.z and x.y from a v* tag (metadata-action strips the v).
    assert "type=semver,pattern={{version}}" in rules
    assert "type=semver,pattern={{major}}.{{minor}}" in rules
    # latest only for version tags, never for main.
    latest = [r for r in rules if "value=latest" in r]
    assert latest == ["type=raw,value=latest,enable=${{ startsWith(github.ref, 'refs/tags/v') }}"]
    assert "latest=false" in meta["with"]["flavor"], "the automatic latest must be off"
    # edge from main.
    assert "type=edge,branch=main" in rules
    build = step("docker/build-push-action@")["with"]
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert build["labels"] == "${{ steps.meta.outputs.labels }}"
