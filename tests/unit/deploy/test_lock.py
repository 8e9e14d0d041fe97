"""The lock files: every package pinned with hashes, covering what pyproject.toml declares.

``make lock`` writes them (uv pip compile --generate-hashes, CPython 3.11 on
Linux); the Dockerfiles install the image locks with ``--require-hashes
--no-deps``, so nothing is resolved while an image builds, and ``make install``
syncs the dev venv to the dev lock with uv, so a developer's machine and CI
get exactly the same versions. A dependency added to pyproject.toml without
``make lock`` fails here, not in a build or on CI.

Completeness is checked against the metadata of the packages installed in
the test virtual environment (``make install`` puts both extras there): the
locked set must be closed under their requirements, markers evaluated for
this interpreter (CPython 3.11 on Linux, like the images). Version ranges of
transitive requirements are checked where the installed version is the
locked one, which is when that metadata is the locked package's own.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy import dockerfiles, repo

SERVICES = ["booking", "notification", "flower", "webhooks"]
BUILD_LOCK = repo.DEPLOY / "build-requirements.lock"
DEV_LOCK = repo.DEPLOY / "dev-requirements.lock"
#: What the dev venv holds: every extra (the tests import Flower and both services).
DEV_EXTRAS = ["booking", "notification", "flower", "dev"]
_DEV_TOOLS = {"pytest", "responses", "import-linter", "honcho", "ruff", "mypy", "hypothesis", "uv"}
#: Packages that must never reach an image: the other team's runtime, test and dev tools;
#: and in the workers' image, Flower's web server.
NEVER = {
    "booking": {"celery", "kombu", "flower", *_DEV_TOOLS},
    "notification": {"flask", "flask-smorest", "gunicorn", "flower", "tornado", *_DEV_TOOLS},
    "flower": {"flask", "flask-smorest", "gunicorn", *_DEV_TOOLS},
    "webhooks": {"flask-smorest", "flower", "tornado", "gevent", *_DEV_TOOLS},
}
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\s*\n\s*--hash=sha256:[0-9a-f]{64})+)", re.M)


@dataclasses.dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def lock_path(service: str):
    return repo.DEPLOY / service / "requirements.lock"


def read_lock(path) -> dict[str, Pin]:
    text = path.read_text()
    pins = {canonicalize_name(m.group(1)): Pin(m.group(2), tuple(re.findall(r"sha256:([0-9a-f]{64})", m.group(3))))
            for m in _ENTRY.finditer(text)}
    requirement_lines = [line for line in text.splitlines()
                         if line and not line[0].isspace() and not line.startswith("#")]
    assert len(requirement_lines) == len(pins), f"{path.name}: every entry must be name==version with sha256 hashes"
    return pins


def declared(service: str, extras: list[str] | None = None) -> list[Requirement]:
    """What pyproject.toml declares for an image (its extras), or for the given ``extras``."""
    project = repo.pyproject()["project"]
    wanted = repo.IMAGE_EXTRAS[service] if extras is None else extras
    extras = [r for e in wanted for r in project["optional-dependencies"][e]]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def _requirements_of(name: str, extras: set[str]) -> tuple[str, list[Requirement]]:
    dist = importlib.metadata.distribution(name)
    found = []
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras | {""}):
            found.append(requirement)
    return dist.version, found


def unlocked(pins: dict[str, Pin], roots: list[Requirement]) -> list[str]:
    """Requirements reachable from ``roots`` that the lock misses or pins outside their range."""
    problems, seen, todo = [], set(), [(r, "pyproject.toml") for r in roots]
    while todo:
        requirement, wanted_by = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement} (wanted by {wanted_by}) is not locked")
            continue
        # A range is checked where it is known to apply: declared by us, or by the locked version itself.
        ranged = wanted_by == "pyproject.toml" or wanted_by.endswith("==")
        if ranged and not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} (wanted by {wanted_by.rstrip('=')}) but the lock pins {pin.version}")
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        installed, children = _requirements_of(name, set(requirement.extras))
        exact = "==" if installed == pin.version else ""
        todo.extend((child, f"{name}{exact}") for child in children)
    return problems


@pytest.mark.parametrize("service", SERVICES)
def test_lock_pins_every_package_with_hashes(service):
    pins = read_lock(lock_path(service))
    assert pins, f"{lock_path(service)} is empty"
    assert all(pin.hashes for pin in pins.values())


@pytest.mark.parametrize("service", SERVICES)
def test_lock_covers_everything_the_service_extra_needs(service):
    assert unlocked(read_lock(lock_path(service)), declared(service)) == [], "run `make lock`"


@pytest.mark.parametrize("service", SERVICES)
def test_lock_holds_nothing_the_image_must_not_ship(service):
    assert not set(read_lock(lock_path(service))) & NEVER[service]


def test_build_lock_covers_the_build_backend():
    requires = [Requirement(r) for r in repo.pyproject()["build-system"]["requires"]]
    assert unlocked(read_lock(BUILD_LOCK), requires) == [], "run `make lock`"


def test_coverage_check_finds_a_missing_or_stale_pin():
    """The check above must fail on a lock that misses a transitive dependency or pins outside a range."""
    pins = read_lock(lock_path("booking"))
    without_werkzeug = {k: v for k, v in pins.items() if k != "werkzeug"}
    assert any("werkzeug" in p for p in unlocked(without_werkzeug, declared("booking")))
    stale = {**pins, "marshmallow": Pin("3.0.0", pins["marshmallow"].hashes)}
    assert any("marshmallow" in p for p in unlocked(stale, declared("booking")))


def test_locks_target_the_images_python():
    """`make lock` resolves for the interpreter the images run, which is the one running these tests."""
    bases = {stage.base for service in SERVICES for stage in dockerfiles.load(service).stages}
    (base,) = bases
    version = re.fullmatch(r"python:(\d+\.\d+)-slim", base).group(1)
    makefile = (repo.ROOT / "Makefile").read_text()
    assert f"--python-version {version}" in makefile and "--python-platform linux" in makefile
    assert "--generate-hashes" in makefile
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == version, "markers are evaluated for this interpreter"
    assert sys.platform == "linux"


def test_dev_lock_pins_every_package_with_hashes():
    pins = read_lock(DEV_LOCK)
    assert pins and all(pin.hashes for pin in pins.values())


def test_dev_lock_covers_every_extra_and_the_build_backend():
    """`make install` syncs the venv to this lock and resolves nothing: what it misses is missing on CI."""
    requires = [Requirement(r) for r in repo.pyproject()["build-system"]["requires"]]
    assert unlocked(read_lock(DEV_LOCK), [*declared("dev", DEV_EXTRAS), *requires]) == [], "run `make lock`"


def test_dev_lock_matches_the_image_locks_where_they_share_a_package():
    """One version of a package across the team: a test passing in .venv proves the images' version."""
    dev = read_lock(DEV_LOCK)
    for service in SERVICES:
        differ = {name: (pin.version, dev[name].version) for name, pin in read_lock(lock_path(service)).items()
                  if name in dev and dev[name].version != pin.version}
        assert differ == {}, f"{service}: image and dev lock disagree (image, dev): {differ}; run `make lock`"


def test_make_install_bootstraps_the_locked_uv_and_syncs_the_dev_lock():
    makefile = (repo.ROOT / "Makefile").read_text()
    version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M).group(1)
    assert read_lock(DEV_LOCK)["uv"].version == version, "UV_VERSION changed without `make lock`"
    installed = re.search(r"^\$\(VENV\)/\.installed: (.*)$", makefile, re.M).group(1).split()
    assert set(installed) >= {"pyproject.toml", "$(DEV_LOCK)"}, "a changed lock or pyproject must reinstall"
    assert re.search(r"^DEV_LOCK := deploy/dev-requirements\.lock$", makefile, re.M)
    assert "uv pip sync" in makefile and "--require-hashes" in makefile
