"""The per-attempt scratch directory of a command: uploads, workdir, runtime files, env.

Layout of one attempt (``<scratch_root>/<job>/<agent>/a<dispatch>.<try>-<random>/``), which
is the directory the original's ``/sandbox/job`` maps to::

    mirror_neuron_input.json     the message body (JSON)
    mirror_neuron_message.json   the envelope
    mirror_neuron_context.json   job id, agent id, agent type, template, state, timestamp
    mirror_neuron_body.bin       the body as bytes (JSON-encoded unless it is a string)
    mirror_neuron_stdout.txt     stdout (capped)
    mirror_neuron_stderr.txt     stderr (capped)
    tmp/                         TMPDIR and HOME of the command
    <upload_as> ...              copies from the bundle's payloads/

Every path taken from a manifest is checked here, whatever validation said before: upload
sources must be relative paths inside ``payloads/`` (no ``..``, no absolute path, no symlink
leading out of ``payloads/``), targets and ``workdir`` must stay inside the scratch directory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mn_node.errors import DataError

SANDBOX_ROOT = "/sandbox/job"
INPUT_FILE = "mirror_neuron_input.json"
MESSAGE_FILE = "mirror_neuron_message.json"
CONTEXT_FILE = "mirror_neuron_context.json"
BODY_FILE = "mirror_neuron_body.bin"
STDOUT_FILE = "mirror_neuron_stdout.txt"
STDERR_FILE = "mirror_neuron_stderr.txt"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class SandboxError(DataError):
    """A manifest asks for a path the command may not have; never retried."""


def safe_name(raw: str) -> str:
    """A single path component for an id: unsafe characters become ``_``."""
    name = _SAFE.sub("_", raw)[:100]
    return "_" if name in ("", ".", "..") else name


def relative_inside(raw: Any, what: str) -> PurePosixPath:
    """A manifest path that must be relative and stay below where it is joined."""
    if not isinstance(raw, str) or not raw.strip():
        raise SandboxError(f"{what}: must be a non-empty relative path; fix: name a folder or file in payloads/")
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise SandboxError(f"{what}: {raw!r} is absolute; fix: use a path relative to payloads/")
    if ".." in path.parts:
        raise SandboxError(f"{what}: {raw!r} leads out with '..'; fix: use a path inside payloads/")
    return path


def uploads(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(source, target)`` pairs from ``upload_paths`` or ``upload_path``/``upload_as``."""
    entries = config.get("upload_paths")
    pairs: list[tuple[str, str]] = []
    if isinstance(entries, list) and entries:
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
                raise SandboxError(f"upload_paths[{i}]: needs a 'source'; "
                                   "fix: {\"source\": \"dir\", \"target\": \"dir\"}")
            src = entry["source"]
            pairs.append((src, str(entry.get("target") or PurePosixPath(src).name)))
        return pairs
    src = config.get("upload_path")
    if src is None:
        return []
    if not isinstance(src, str):
        raise SandboxError("upload_path: must be a string; fix: name a folder of payloads/")
    return [(src, str(config.get("upload_as") or PurePosixPath(src).name))]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _copy_tree(src: Path, dst: Path, payloads: Path, seen: int = 0) -> None:
    """Copy ``src`` to ``dst`` without following any symlink out of ``payloads``."""
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        real = src.resolve()
        if not _inside(real, payloads):
            raise SandboxError(f"upload: {src.relative_to(payloads)} is a symlink out of payloads/; "
                               "fix: put the file itself in the bundle")
        if real.is_dir():
            raise SandboxError(f"upload: {src.relative_to(payloads)} is a symlinked folder; "
                               "fix: copy the folder into the bundle instead")
        src, st = real, real.stat()
    if stat.S_ISDIR(st.st_mode):
        dst.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            _copy_tree(child, dst / child.name, payloads)
    elif stat.S_ISREG(st.st_mode):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst, follow_symlinks=False)
        os.chmod(dst, 0o755 if st.st_mode & 0o111 else 0o644)
    else:
        raise SandboxError(f"upload: {src.name} is not a regular file or folder; fix: remove it from the bundle")


def copy_uploads(config: Mapping[str, Any], bundle_dir: Path | None, base: Path) -> list[str]:
    """Copy the uploads into ``base``; returns the targets copied."""
    pairs = uploads(config)
    if not pairs:
        return []
    if bundle_dir is None:
        raise SandboxError("upload_path: this job has no bundle; fix: run it from a bundle folder with payloads/")
    payloads = (bundle_dir / "payloads").resolve()
    done = []
    for src_raw, dst_raw in pairs:
        src_rel = relative_inside(src_raw, "upload source")
        dst_rel = relative_inside(dst_raw, "upload target")
        src = payloads / src_rel
        if not _inside(src.parent.resolve(), payloads):
            raise SandboxError(f"upload source: {src_raw!r} leads out of payloads/ through a symlink; "
                               "fix: use a real folder of payloads/")
        if not src.exists() and not src.is_symlink():
            raise SandboxError(f"upload source: payloads/{src_raw} does not exist; fix: add it to the bundle")
        dst = base / dst_rel
        if not _inside(dst.parent.resolve(), base.resolve()):
            raise SandboxError(f"upload target: {dst_raw!r} leads out of the scratch directory; fix: use a plain name")
        _copy_tree(src, dst, payloads)
        done.append(str(dst_rel))
    return done


def resolve_workdir(config: Mapping[str, Any], base: Path) -> Path:
    """Map ``workdir`` into the scratch directory (created if missing)."""
    root = str(config.get("sandbox_upload_path") or SANDBOX_ROOT).rstrip("/") or "/"
    raw = config.get("workdir")
    if raw is None or raw == "":
        return base
    if not isinstance(raw, str):
        raise SandboxError("workdir: must be a string; fix: use a path under /sandbox/job")
    path = PurePosixPath(raw)
    if path.is_absolute():
        if raw.rstrip("/") == root:
            return base
        if not raw.startswith(root + "/"):
            raise SandboxError(f"workdir: {raw!r} is outside {root}; fix: use a path under {root} "
                               "(it maps to the attempt's scratch directory)")
        path = PurePosixPath(raw[len(root) + 1:])
    if ".." in path.parts:
        raise SandboxError(f"workdir: {raw!r} leads out with '..'; fix: use a path under {root}")
    workdir = base / path
    workdir.mkdir(parents=True, exist_ok=True)
    if not _inside(workdir.resolve(), base.resolve()):
        raise SandboxError(f"workdir: {raw!r} leads out of the scratch directory through a symlink; "
                           "fix: use a real folder")
    return workdir


def make_attempt_dir(scratch_root: Path, job_id: str, agent_id: str, dispatch: int, local: int) -> Path:
    parent = scratch_root / safe_name(job_id) / safe_name(agent_id)
    parent.mkdir(parents=True, exist_ok=True)
    base = parent / f"a{dispatch}.{local}-{secrets.token_hex(4)}"
    base.mkdir(mode=0o700)
    (base / "tmp").mkdir()
    return base


@dataclass(frozen=True)
class RuntimeFiles:
    input_file: Path
    message_file: Path
    context_file: Path
    body_file: Path


def body_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def write_runtime_files(base: Path, message: Mapping[str, Any], context: Mapping[str, Any]) -> RuntimeFiles:
    files = RuntimeFiles(base / INPUT_FILE, base / MESSAGE_FILE, base / CONTEXT_FILE, base / BODY_FILE)
    body = message.get("body")
    files.input_file.write_text(json.dumps(body, indent=2, default=str))
    files.message_file.write_text(json.dumps(dict(message), indent=2, default=str))
    files.body_file.write_bytes(body_bytes(body))
    files.context_file.write_text(json.dumps({**context, "timestamp": time.time()}, indent=2, default=str))
    return files
