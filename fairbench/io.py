"""Small file helpers: atomic writes, checksums, JSON lines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from fairbench.errors import UserError


def file_mode() -> int:
    """The mode open() gives a new file under the current umask (mkstemp's 0600 would hide results)."""
    try:  # Linux reports the umask without changing it (os.umask would, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


TMP_SUFFIX = ".tmp"
LOCK = ".fairbench.lock"  # a run directory's lock file (run_lock)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and rename, so readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a directory in the way, a full disk, a read-only mount: the user's to fix
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image: Any) -> bytes:
    """Deterministic PNG encoding of a PIL image (no timestamps or text chunks)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=4)
    return buf.getvalue()


def atomic_save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    """Write a safetensors file atomically (processes of one run may share a cached checkpoint)."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def optimizer_tensors(opt: Any, names: list[str]) -> dict[str, Any]:
    """An optimizer's per-parameter state as flat tensors for a safetensors checkpoint: `<name>.<key>`
    for its i-th parameter named names[i] (Adam's and AdamW's step, exp_avg and exp_avg_sq)."""
    import torch

    state = opt.state_dict()["state"]
    return {f"{name}.{key}": torch.as_tensor(value) for i, name in enumerate(names)
            for key, value in state.get(i, {}).items()}


def load_optimizer_tensors(opt: Any, names: list[str], saved: dict[str, Any]) -> None:
    """Restore what `optimizer_tensors` wrote (parameters without saved state start fresh)."""
    state = {i: {k: saved[f"{n}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq")} for i, n in enumerate(names)
             if f"{n}.exp_avg" in saved}
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, pretty-printed and key-sorted so diffs stay readable."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise a UserError when `expected` is given and differs."""
    actual = sha256_file(path)
    if expected and actual.lower() != expected.lower():
        raise UserError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")
    return actual


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, dropping a torn last line left by a crash and any line that is not a
    JSON object (a corrupt line: the rows it held are missing, and a resumed run regenerates them)."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn tail of an interrupted append
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock: a second process writing the same run is refused.

    flock locks die with their process, so the lock of a killed run is free for its resume. The lock file
    is removed on release, so a finished run, or one whose check refused it, keeps no trace of the lock.
    """
    import fcntl

    path = run_dir / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot write into {run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = path.read_text(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{run_dir} is being written by another fairbench process (pid {holder}); "
                            "wait for it to finish, or choose another --out") from None
        try:  # the holder before us may have removed the file on release: a lock on a removed file locks nothing
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still held, so the next holder locks a new file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically (re)write a whole JSON-lines file."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


NAME_MAX = 255  # bytes in one file or folder name, on every common file system


def check_writable_target(path: Path) -> None:
    """Check, without creating anything, that `path` is a writable folder or could be created as one."""
    long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise UserError(f"output directory {str(path)!r}: the folder name {long[:40]!r}... is "
                        f"{len(os.fsencode(long))} bytes, more than a file system allows ({NAME_MAX})")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe == path and not path.is_dir():
        raise UserError(f"output directory {str(path)!r} is a file, not a directory")
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output directory {str(path)!r} is not writable ({str(probe)!r} is not a writable folder)")


def check_writable_file(path: Path) -> None:
    """Check, without creating anything, that a file can be written at `path` (its folder exists or can be
    created, and `path` is not a folder)."""
    if path.is_dir():
        raise UserError(f"{str(path)!r} is a directory, not a file")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder")
    check_writable_target(folder)


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and check that files can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a unique probe name: processes of one `accelerate launch` check the same folder at once
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fairbench-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output directory {str(path)!r} is not writable: {exc.strerror or exc}") from None
    return path


def load_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """Safe-load a YAML file; every way it can be broken is a one-line UserError.

    Duplicate keys and keys that are not strings are refused: PyYAML's safe loader would silently
    keep the last of two duplicates.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is not a string", key_node.start_mark)
            if key in out:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            out[key] = loader.construct_object(value_node, deep=True)
        return out

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"malformed YAML in {what} {path}: {' '.join(str(exc).split())[:200]}") from None


def load_torch_state_dict(path: Path, what: str) -> dict[str, Any]:
    """A .pt/.pth state dict read with torch.load(weights_only=True): anything else is a one-line error."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a {what} state dict that loads safely (weights_only): {first}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds a {type(state).__name__}, not a {what} state dict of tensors")
    return state


def load_safetensors_file(path: Path, what: str) -> dict[str, Any]:
    """A safetensors file, with a one-line error when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a valid {what} safetensors file: {str(exc)[:160]}") from None
