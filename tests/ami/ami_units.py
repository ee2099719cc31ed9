"""The part of systemd's unit files that the image test needs, read as systemd reads it.

systemd cannot run in a chroot, so tests/ami/run_units.py starts the image's services by running
the ``ExecStart=`` commands of the installed unit files itself, with the environment, user,
working directory and limits those files ask for. This module turns a unit file into that: the
``[Service]`` settings, ``EnvironmentFile=`` parsing, and systemd's expansion of ``${VAR}``
(one argument, whitespace kept) and ``$VAR`` (a word of its own, split at whitespace). Anything
the image's units do not use and this module does not implement (specifiers such as ``%i``,
``ExecStart=`` prefixes other than ``-``, ``+`` and ``@``) raises ``UnitError`` rather than
being run differently from systemd. Standard library only: it runs under the host's python3.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LIMITS = {"LimitMEMLOCK": "RLIMIT_MEMLOCK", "LimitNOFILE": "RLIMIT_NOFILE"}


class UnitError(ValueError):
    """A unit file this module cannot read, or a command it cannot expand as systemd would."""


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]         # before expansion
    ignore_failure: bool = False  # "-" prefix
    privileged: bool = False      # "+" prefix: run as root whatever User= says


@dataclass
class Unit:
    name: str
    path: str
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, section: str, key: str, default: str | None = None) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else default

    @property
    def type(self) -> str:
        return self.value("Service", "Type", "simple")

    @property
    def user(self) -> str | None:
        return self.value("Service", "User")

    @property
    def group(self) -> str | None:
        return self.value("Service", "Group")

    @property
    def working_directory(self) -> str | None:
        return self.value("Service", "WorkingDirectory")

    @property
    def success_exit_status(self) -> set[int]:
        codes = {0}
        for value in self.values("Service", "SuccessExitStatus"):
            codes.update(int(v) for v in value.split() if v.isdigit())
        return codes

    @property
    def limits(self) -> dict[str, int | None]:
        """RLIMIT_* name -> value (None: infinity)."""
        out = {}
        for key, rlimit in _LIMITS.items():
            value = self.value("Service", key)
            if value is not None:
                out[rlimit] = None if value == "infinity" else int(value)
        return out

    def commands(self, key: str = "ExecStart") -> list[Command]:
        return [parse_command(self, v) for v in self.values("Service", key) if v]

    def environment(self) -> list[tuple[str, str]]:
        """``Environment=`` assignments in order (each line may hold several, quoted)."""
        out = []
        for line in self.values("Service", "Environment"):
            for word in shlex.split(line):
                key, sep, value = word.partition("=")
                if not sep or not _NAME.fullmatch(key):
                    raise UnitError(f"{self.path}: Environment={line!r}: {word!r} is not KEY=VALUE")
                out.append((key, value))
        return out

    def environment_files(self) -> list[tuple[str, bool]]:
        """``EnvironmentFile=`` paths in order, with whether each must exist ("-" prefix)."""
        return [(v[1:], False) if v.startswith("-") else (v, True)
                for v in self.values("Service", "EnvironmentFile")]


def load(path: str) -> Unit:
    unit = Unit(name=os.path.basename(path), path=path)
    section = None
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")  # continued lines
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        if section is None or not sep:
            raise UnitError(f"{path} line {number}: expected a [Section] or KEY=VALUE, got {raw!r}")
        unit.sections[section].append((key.strip(), value.strip()))
    if unit.type not in ("simple", "exec", "oneshot"):
        raise UnitError(f"{path}: Type={unit.type} is not run by this test's runner")
    return unit


def parse_command(unit: Unit, value: str) -> Command:
    ignore = privileged = False
    while value and value[0] in "-+@!:":
        prefix, value = value[0], value[1:]
        if prefix == "-":
            ignore = True
        elif prefix == "+":
            privileged = True
        else:
            raise UnitError(f"{unit.path}: ExecStart prefix {prefix!r} is not supported here")
    if re.search(r"%[^%]", value):
        raise UnitError(f"{unit.path}: specifiers (%x) are not supported here: {value!r}")
    return Command(argv=tuple(shlex.split(value.replace("%%", "%"))), ignore_failure=ignore,
                   privileged=privileged)


def read_environment_file(path: str) -> list[tuple[str, str]]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them: ``#``/``;`` comments, blank
    lines, whitespace around the key, a value wholly in double or single quotes unquoted."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _NAME.fullmatch(key):
                raise UnitError(f"{path} line {number}: expected KEY=VALUE, got {raw.rstrip()!r}")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                quote, value = value[0], value[1:-1]
                if quote == '"':
                    value = re.sub(r"\\(.)", r"\1", value)
            out.append((key, value))
    return out


def expand(argv: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """systemd's variable expansion of an ExecStart= command line; an unset variable is an
    error here (systemd would expand it to nothing, which hides a missing setting)."""
    def lookup(name):
        if name not in env:
            raise UnitError(f"${{{name}}} is not set by the unit's Environment/EnvironmentFile")
        return env[name]

    out = []
    for word in argv:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            out.extend(lookup(whole.group(1)).split())
        else:
            out.append(_BRACED.sub(lambda m: lookup(m.group(1)), word))
    return out


def service_environment(unit: Unit, root: str, base: dict[str, str]) -> dict[str, str]:
    """The environment systemd gives the unit's processes: ``base`` (PATH, HOME, ...), then
    Environment=, then each EnvironmentFile= (read inside ``root``) in order."""
    env = dict(base)
    env.update(unit.environment())
    for path, required in unit.environment_files():
        full = os.path.join(root, path.lstrip("/"))
        if not os.path.exists(full):
            if required:
                raise UnitError(f"{unit.name}: EnvironmentFile={path} does not exist in {root}")
            continue
        env.update(read_environment_file(full))
    return env
