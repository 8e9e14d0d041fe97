"""The images (the two services and Flower): slim, non-root, only their own code and extras, real entry points.

Docker is not available on the test machines, so each Dockerfile is parsed
(dockerfile-parse) and the one step that decides what goes into an image, the
wheel its builder stage makes from the files it COPYs, is really run.
"""

from __future__ import annotations

import email.parser
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.deploy import commands, dockerfiles, repo

SERVICES = ["booking", "notification", "flower", "webhooks"]
OTHER = {"booking": "notification_service", "notification": "booking_service", "flower": "booking_service",
         "webhooks": "booking_service"}
#: Packages whose presence in an image means the other team's runtime (or Flower's web server) leaked in.
FOREIGN_REQUIREMENTS = {
    "booking": {"celery", "kombu", "flower"},
    "notification": {"flask", "flask-smorest", "gunicorn", "flower"},
    "flower": {"flask", "flask-smorest", "gunicorn"},
    "webhooks": {"celery-flower", "flask-smorest", "flower"},
}
DEV_TOOLS = {"gcc", "build-essential", "make", "git", "pytest", "vim", "curl"}


@pytest.fixture(params=SERVICES)
def service(request) -> str:
    return request.param


@pytest.fixture
def image(service) -> dockerfiles.Image:
    return dockerfiles.load(service)


def test_image_builds_in_a_builder_stage_on_python_311_slim(image):
    assert len(image.stages) >= 2, "build wheels in a builder stage, copy only the result"
    assert all(stage.base == "python:3.11-slim" for stage in image.stages), [s.base for s in image.stages]
    builder_names = {stage.name for stage in image.stages[:-1]}
    # The runtime only takes things *from* a builder stage, never builds itself.
    assert not any("pip wheel" in run for run in image.runtime.values("RUN"))
    assert any(f"from={name}" in run for name in builder_names for run in image.runtime.values("RUN")) or any(
        f"--from={name}" in copy for name in builder_names for copy in image.runtime.values("COPY")
    )


def test_runtime_runs_as_a_fixed_non_root_uid(image):
    user = image.runtime.last("USER")
    assert user, "the runtime stage must switch to a non-root USER"
    uid = user.split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, user
    created = " ".join(image.runtime.values("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", created), "the uid must exist in the image"
    user_index = max(i for i, (kind, _) in enumerate(image.runtime.instructions) if kind == "USER")
    assert all(kind != "RUN" for kind, _ in image.runtime.instructions[user_index:]), "nothing runs as root after USER"


def _pip_calls(stage: dockerfiles.Stage) -> list[list[str]]:
    """Each ``pip install`` / ``pip wheel`` of a stage as its words (from ``pip`` on, up to the next ``&&``)."""
    calls = []
    for words in dockerfiles.run_words(stage):
        for i, word in enumerate(words):
            if word == "pip" and i + 1 < len(words) and words[i + 1] in ("install", "wheel"):
                end = words.index("&&", i) if "&&" in words[i:] else len(words)
                calls.append(words[i:end])
    return calls


def _bind_mounts(stage: dockerfiles.Stage) -> dict[str, str]:
    """RUN --mount=type=bind targets -> sources (build-context files only, not from= stages)."""
    found = {}
    for words in dockerfiles.run_words(stage):
        for word in words:
            if word.startswith("--mount=type=bind,") and "from=" not in word:
                fields = dict(f.split("=", 1) for f in word.removeprefix("--mount=").split(","))
                found[fields["target"]] = fields["source"]
    return found


def test_image_installs_its_lock_with_hashes_and_resolves_nothing(service, image):
    """No dependency is resolved while an image builds: every pip call is --no-deps, and what it
    installs from an index is a lock file with --require-hashes."""
    for stage in image.stages:
        mounts = _bind_mounts(stage)
        for call in _pip_calls(stage):
            assert "--no-deps" in call, f"{' '.join(call)}: would resolve dependencies at build time"
            if "-r" in call:
                assert "--require-hashes" in call, " ".join(call)
                lock = mounts[call[call.index("-r") + 1]]
                assert (repo.ROOT / lock).is_file(), lock
            elif call[1] == "install":
                assert "--no-index" in call, f"{' '.join(call)}: only the project's own wheel, from the builder"
    runtime_locks = [_bind_mounts(image.runtime)[c[c.index("-r") + 1]] for c in _pip_calls(image.runtime) if "-r" in c]
    assert runtime_locks == [f"deploy/{service}/requirements.lock"], "the runtime installs its own service's lock"
    builder_locks = [_bind_mounts(s)[c[c.index("-r") + 1]]
                     for s in image.stages[:-1] for c in _pip_calls(s) if "-r" in c]
    assert builder_locks == ["deploy/build-requirements.lock"], "the build backend is locked too"
    wheel = [c for s in image.stages[:-1] for c in _pip_calls(s) if c[1] == "wheel"]
    assert len(wheel) == 1 and "--no-build-isolation" in wheel[0], "build isolation would fetch the backend unpinned"
    assert any("pip check" in run for run in image.runtime.values("RUN")), "pip check proves the lock is complete"


def test_image_installs_no_dev_tools(image):
    every_word = {w for stage in image.stages for words in dockerfiles.run_words(stage) for w in words}
    assert not every_word & DEV_TOOLS, every_word & DEV_TOOLS
    assert not any("dev]" in w or ",dev" in w for w in every_word)


def test_service_extra_never_pulls_the_other_teams_runtime(service):
    for extra in repo.IMAGE_EXTRAS[service]:
        assert not set(repo.extra(extra)) & FOREIGN_REQUIREMENTS[service], extra


def _copy_build_context(stage: dockerfiles.Stage, dest: pathlib.Path) -> None:
    """Reproduce the builder's COPY instructions (context = repository root) into ``dest``.

    Docker semantics: a directory source copies its *contents* to the target;
    a file goes into a target ending in ``/`` under its own name.
    """
    for value in stage.values("COPY"):
        *sources, target = value.split()
        assert not any(s.startswith("--") for s in sources), "the builder COPYs from the build context only"
        for source in sources:
            origin, into = repo.ROOT / source, dest / target
            if origin.is_dir():
                shutil.copytree(origin, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif target.endswith("/"):
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into / origin.name)
            else:
                shutil.copy2(origin, into)


def test_wheel_built_from_the_copied_files_ships_only_that_service(service, image, tmp_path):
    context, out = tmp_path / "src", tmp_path / "wheels"
    context.mkdir()
    _copy_build_context(image.stages[0], context)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), str(context)],
        capture_output=True, text=True, timeout=120,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(meta_name).decode())
        entry_points = archive.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert {"shared", repo.IMAGE_PACKAGES[service]} <= top
    assert OTHER[service] not in top, "the other team's code must not reach this image"
    assert "tests" not in top
    for extra in repo.IMAGE_EXTRAS[service]:
        own = [r for r in metadata.get_all("Requires-Dist") if f'extra == "{extra}"' in r]
        assert own, f"the wheel declares no [{extra}] extra"
    script = {"booking_service": "booking-service", "notification_service": "notification-service"}
    assert f"{script[repo.IMAGE_PACKAGES[service]]} = " in entry_points


def test_default_command_is_a_real_entry_point_of_the_image(service, image):
    argv = image.argv()
    assert commands.problems(argv, repo.IMAGE_PACKAGES[service]) == []


def test_booking_image_serves_http_with_a_healthcheck_on_its_exposed_port():
    image = dockerfiles.load("booking")
    port = int(image.env()["BOOKING_BIND"].rsplit(":", 1)[1])
    metrics = int(image.env()["BOOKING_METRICS_BIND"].rsplit(":", 1)[1])  # /metrics off the public port
    assert metrics != port and image.exposed_ports() == {port, metrics}
    (check,) = image.runtime.values("HEALTHCHECK")
    assert f"127.0.0.1:{port}/healthz" in check
    assert image.argv() == ["booking-service", "serve"]


def test_image_env_vars_are_ones_the_code_reads(service, image):
    assert repo.unknown_env(repo.IMAGE_PACKAGES[service], image.env()) == []


def test_notification_image_exposes_the_metrics_port_the_code_serves():
    image = dockerfiles.load("notification")
    port = int(image.env()["NOTIFICATION_METRICS_PORT"])
    assert image.exposed_ports() == {port}
    assert repo.env_example("notification_service")["NOTIFICATION_METRICS_PORT"] == str(port)


def test_flower_image_serves_its_ui_on_the_exposed_port_with_a_healthcheck():
    image = dockerfiles.load("flower")
    argv = image.argv()
    assert argv[3] == "flower", argv
    port = int(commands.option(argv, "--port"))
    assert image.exposed_ports() == {port}
    (check,) = image.runtime.values("HEALTHCHECK")
    assert f"127.0.0.1:{port}/healthcheck" in check
