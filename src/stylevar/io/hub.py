"""The Hugging Face Hub: where the released weights live (``Senfier-LiqiJing/StyleVAR``).

Downloads go through ``huggingface_hub`` and its cache. Offline, a file already in the cache is used
without waiting through the client's retries; one that is not gives one line saying how to get it on a
connected machine (``hf download REPO FILE``) and which flags take the local files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError
from .safe import short_error

DEFAULT_REPO = "Senfier-LiqiJing/StyleVAR"
#: a Hub repo id (``owner/name``), as opposed to a local path
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(text: str) -> bool:
    """True for ``owner/name`` strings that are not paths (no leading ``.``, ``/`` or ``~``)."""
    return bool(REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def _hub_errors() -> tuple[type, type]:
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError  # type: ignore
    return EntryNotFoundError, LocalEntryNotFoundError


class HubUnreachableError(CheckpointError):
    """A Hub file could not be downloaded (offline or unreachable) and is not in the local cache."""


def hub_host_resolves() -> bool:
    """False when the Hub's host name does not resolve (no network): no point in the client's retries.

    Behind a proxy the local resolver may not know the host while downloads still work, so any
    proxy setting counts as reachable.
    """
    import socket
    from urllib.parse import urlparse

    if any(
        os.environ.get(v)
        for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    if not host:
        return True
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    missing_ok: bool = False,
) -> Path | None:
    """Fetch one file of a Hub repo through ``huggingface_hub`` (and its cache).

    Returns ``None`` for a file the repo does not have when ``missing_ok``; raises a one-line
    :class:`HubUnreachableError` when offline and not cached, :class:`CheckpointError` for other
    failures (unknown repo, authentication).
    """
    from huggingface_hub import hf_hub_download

    entry_missing, local_missing = _hub_errors()
    try:
        return Path(
            hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
            )
        )
    except local_missing:
        raise HubUnreachableError(
            f"cannot get {filename} of the Hub repo {repo_id}: offline and not in the Hugging Face cache; "
            f"download it on a connected machine (hf download {repo_id} {filename}) and pass "
            "--checkpoint/--vae with the local paths"
        ) from None
    except entry_missing:
        if missing_ok:
            return None
        raise CheckpointError(f"the Hub repo {repo_id} has no file {filename}") from None
    except Exception as e:  # network, authentication, unknown repo
        raise CheckpointError(
            f"cannot download {filename} from the Hub repo {repo_id} ({type(e).__name__}: {short_error(e)}); "
            "check the repo id and your connection, or pass local files with --checkpoint/--vae"
        ) from None


def hub_has_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> bool:
    """Whether ``filename`` of the Hub repo is in the local cache, or (online) in the repo; no download.
    Offline (``local_files_only``, ``HF_HUB_OFFLINE`` or an unresolvable Hub) only the cache counts."""
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return True
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
    if offline or not hub_host_resolves():
        return False
    try:
        return bool(huggingface_hub.file_exists(repo_id, filename, revision=revision))
    except Exception:  # unreachable, unknown repo, authentication: not usable from here
        return False
