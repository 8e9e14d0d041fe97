"""Read a Dockerfile into stages with the facts the tests check (via dockerfile-parse)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex

from dockerfile_parse import DockerfileParser

from . import repo


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.values(instruction)
        return found[-1] if found else None

    def exec_form(self, instruction: str) -> list[str]:
        """ENTRYPOINT/CMD as an argv list; the shell form is refused (signals would not reach the app)."""
        value = self.last(instruction)
        if value is None:
            return []
        assert value.startswith("["), f"{instruction} {value!r} must use the exec (JSON) form"
        return json.loads(value)


@dataclasses.dataclass
class Image:
    service: str
    stages: list[Stage]
    parser: DockerfileParser

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]

    def argv(self, command: list[str] | None = None) -> list[str]:
        """What a container runs: ENTRYPOINT + (``command`` or CMD)."""
        cmd = command if command is not None else self.runtime.exec_form("CMD")
        return self.runtime.exec_form("ENTRYPOINT") + list(cmd)

    def env(self) -> dict[str, str]:
        return dict(self.parser.envs)

    def exposed_ports(self) -> set[int]:
        return {int(p.split("/")[0]) for v in self.runtime.values("EXPOSE") for p in v.split()}


def load(service: str) -> Image:
    path = repo.DEPLOY / service / "Dockerfile"
    parser = DockerfileParser(str(path))
    args = {}
    stages: list[Stage] = []
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "COMMENT":
            continue
        if kind == "ARG" and not stages:
            name, _, default = value.partition("=")
            args[name.strip()] = default.strip()
            continue
        if kind == "FROM":
            parts = value.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name, instructions=[]))
            continue
        stages[-1].instructions.append((kind, value))
    return Image(service=service, stages=stages, parser=parser)


def run_words(stage: Stage) -> list[list[str]]:
    """Each RUN as shell words (line continuations folded)."""
    return [shlex.split(value.replace("\\\n", " ")) for value in stage.values("RUN")]
