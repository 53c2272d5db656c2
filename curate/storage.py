"""Where data lives: local paths and fsspec URLs (`s3://`, `gs://`, `hf://datasets/...`, `file://`).

Every location curate reads or writes may be a local path or a URL. Credentials and endpoints come from
the environment of the process, never from a job file:

- S3 and S3-compatible stores (s3fs, through botocore): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
  (`AWS_SESSION_TOKEN`), or `AWS_PROFILE`; the region in `AWS_DEFAULT_REGION`; the endpoint of an
  S3-compatible store (MinIO, Ceph, a test server) in `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, which
  botocore reads whenever a client is made. `FSSPEC_S3_ENDPOINT_URL` works too, but fsspec reads it once,
  when it is first imported.
- Hugging Face hub (`hf://datasets/...`, huggingface_hub): `HF_TOKEN`.
- Google Cloud Storage (`gs://`, needs `gcsfs` installed): `GOOGLE_APPLICATION_CREDENTIALS`.

A location that cannot be reached (missing bucket, refused credentials, unreachable endpoint) raises
`StorageError` (or its subclass `curate.io.InputError` for inputs) with one line naming the location and
the problem.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from pathlib import Path, PurePath

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

LOCAL_PROTOCOLS = ("file", "local")
# stores where an upload becomes visible only once it is complete (one PUT, or a multipart upload's completion)
WHOLE_UPLOAD_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf"}
VERSION_KEYS = ("ETag", "etag", "md5Hash", "blob_id", "sha256")
MTIME_KEYS = ("LastModified", "mtime", "updated", "last_modified", "created")
S3_HINT = ("credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
           "the endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL")
GS_HINT = "credentials come from GOOGLE_APPLICATION_CREDENTIALS"
CREDENTIALS_HINT = {"s3": S3_HINT, "s3a": S3_HINT, "gs": GS_HINT, "gcs": GS_HINT, "hf": "the token comes from HF_TOKEN"}
CHUNK_BYTES = 1 << 20


class StorageError(OSError):
    """A location that cannot be listed, read or written; the message is one line naming it."""


def is_remote(path: str | Path) -> bool:
    """Whether `path` is a URL of a store other than the local filesystem."""
    return local_path(path) is None


def local_path(path: str | Path) -> str | None:
    """The local filesystem path of a plain path (kept as given) or a `file://` URL; None for other URLs.

    A URL must stay a string: `Path("s3://b/k")` is the local path `s3:/b/k`, refused here."""
    if isinstance(path, PurePath) and re.match(r"^[a-z][a-z0-9+.-]*:/(?!/)", str(path)):
        raise ValueError(f"{path}: a URL held in a Path lost its '//'; pass URLs as str")
    path = str(path)
    if "://" not in path and "::" not in path:
        return path
    if get_protocol(path) in LOCAL_PROTOCOLS and "::" not in path:
        return url_to_fs(path)[1]
    return None


def filesystem(url: str, error: type[StorageError] = StorageError) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a location and the path inside it (a missing fsspec backend is `error`)."""
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise error(f"{url}: cannot open this kind of location: {first_line(e)}") from None


def join(base: str | Path, *parts: str) -> str:
    """`base` and relative `parts` joined with the separator of where `base` lives."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return os.path.join(base, *parts)


def first_line(error: BaseException) -> str:
    """The first line of an error's message, unprintable characters replaced (its class name when empty)."""
    lines = str(error).strip().splitlines()
    return "".join(c if c.isprintable() else "?" for c in lines[0].strip()) if lines else type(error).__name__


def describe(error: BaseException, location: str) -> str:
    """A short phrase for a failed storage call: missing file or bucket, access refused (and where
    credentials come from), missing credentials, unreachable endpoint, or the error's own first line."""
    reason = first_line(error)
    hint = CREDENTIALS_HINT.get(get_protocol(location))
    name = type(error).__name__
    if isinstance(error, FileNotFoundError):
        return f"no such bucket ({reason})" if "bucket" in reason.lower() else "no such file or folder"
    if isinstance(error, PermissionError):
        return f"access denied ({reason}){'; ' + hint if hint else ''}"
    if "Credentials" in name:
        return f"no credentials found ({reason}){'; ' + hint if hint else ''}"
    if "Connect" in name or "Timeout" in name:
        return f"cannot reach the store ({reason})"
    return f"{name}: {reason}"


@contextlib.contextmanager
def storage_errors(location: str, error: type[StorageError] = StorageError, doing: str = ""):
    """Turn any failure of a storage call on a remote `location` into one `error` line naming it.

    Local paths keep Python's own OSError (its message already names the file)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - every backend has its own errors; all of them mean "this location failed"
        if not is_remote(location) and isinstance(e, OSError):
            raise
        raise error(f"{location}: {doing + ': ' if doing else ''}{describe(e, location)}") from None


def exists(path: str | Path) -> bool:
    """Whether a file or folder exists at `path` (a missing bucket is an error, not False)."""
    local = local_path(path)
    if local is not None:
        return os.path.exists(local)
    fs, fs_path = filesystem(str(path))
    with storage_errors(str(path)):
        return fs.exists(fs_path)


def read_bytes(path: str | Path) -> bytes:
    """The whole content of a (small) file."""
    local = local_path(path)
    if local is not None:
        return Path(local).read_bytes()
    fs, fs_path = filesystem(str(path))
    with storage_errors(str(path)):
        return fs.cat_file(fs_path)


def stamp(path: str | Path) -> tuple:
    """What identifies a file's current version, from what its store reports, without reading it.

    Local: (absolute path, size, mtime_ns). URL: (URL, size, version), the version being the store's ETag
    (S3), md5/etag (GCS) or blob id (Hugging Face hub), else its modification time as text."""
    local = local_path(path)
    if local is not None:
        st = os.stat(local)
        return os.path.abspath(local), st.st_size, st.st_mtime_ns
    fs, fs_path = filesystem(str(path))
    with storage_errors(str(path)):
        info = fs.info(fs_path)
    version = next((info[k] for k in VERSION_KEYS if info.get(k)), None)
    if version is None:
        version = next((str(info[k]) for k in MTIME_KEYS if info.get(k)), None)
    return fs.unstrip_protocol(fs_path), int(info.get("size") or 0), version


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, streamed in 1 MiB chunks (a URL is streamed from its store)."""
    h = hashlib.sha256()
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                h.update(chunk)
        return h.hexdigest()
    fs, fs_path = filesystem(str(path))
    with storage_errors(str(path)), fs.open(fs_path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def upload(local_file: str | Path, url: str) -> None:
    """Put a finished local file at `url` so that nothing incomplete ever stands under that name.

    Object stores (S3, GCS, Azure, the Hugging Face hub) show an upload only once it completes (one PUT, or
    the completion of a multipart upload; a writer killed midway leaves no object), so the file goes straight
    to its name. Other filesystems get it under a temporary name beside, then a move (a rename, or a copy and
    a delete), and the temporary object is removed when that fails."""
    fs, fs_path = filesystem(url)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    with storage_errors(url, doing="cannot write"):
        if protocols & WHOLE_UPLOAD_PROTOCOLS:
            fs.put_file(str(local_file), fs_path)
            return
        parent, name = fs._parent(fs_path), fs_path.rsplit("/", 1)[-1]
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            fs.put_file(str(local_file), tmp)
            fs.mv(tmp, fs_path)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(tmp)
            raise
