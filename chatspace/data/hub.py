"""Fetching from the Hugging Face Hub on a login node, through `huggingface_hub` itself:
`HF_TOKEN`, `HF_ENDPOINT` and `HF_HOME` are honoured, files land in the HF cache and an
interrupted download resumes there (the client retries a dropped connection with a ``Range``
request, and a later call continues from the cache's ``.incomplete`` file). A progress bar on a
terminal, plain log lines otherwise. Every failure is one line (`BadInput`): unknown repo or
revision, a gated or private repo without a token (naming `HF_TOKEN`), no network (saying that
cached copies are used when present). Compute-node commands never come here: they run with
``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput
from chatspace.names import check_relative
from chatspace.text import one_line

log = logging.getLogger(__name__)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (then only the local caches are read)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Snapshot:
    """A repo's files at one commit, in the HF cache."""

    path: Path
    commit: str


COMMIT = re.compile(r"[0-9a-f]{40}")
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")


class HostileAnswer(BadInput):
    """The Hub (or a mirror) answered something that must not become a path."""


def check_revision(revision: str | None) -> str | None:
    """`--revision` if it is a branch, tag or commit name (letters, digits, ``._/-``, no
    ``..`` part); BadInput otherwise. It names the Hub's cache files (``refs/{revision}``)."""
    if revision is not None and not (REVISION.fullmatch(revision)
                                     and ".." not in revision.split("/")
                                     and "//" not in revision and not revision.endswith("/")):
        raise BadInput(f"--revision {one_line(revision[:60])!r} is not a branch, tag or commit "
                       "name (letters, digits and ._/- only, no '..')")
    return revision


def _check_answer(response: Any) -> None:
    """Every Hub answer: a commit it names (``X-Repo-Commit``, which the client makes a cache
    path) must be 40 hex digits."""
    commit = response.headers.get("X-Repo-Commit")
    if commit is not None and not COMMIT.fullmatch(commit):
        raise HostileAnswer(f"the Hub at {_endpoint()} answered the commit "
                            f"{one_line(commit[:60])!r}, which is not 40 hex digits: refused")


def _client() -> Any:
    """The Hub client's HTTP client, bounded in time (its default waits forever on a server
    that accepts and never answers) and checking every answer (`_check_answer`)."""
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    bound = httpx2.Timeout(hub_timeout()).as_dict()

    def bounded(request: Any) -> None:
        # the client passes timeout=None per request (no bound): each phase gets ours
        limits = request.extensions.get("timeout", {})
        request.extensions["timeout"] = {k: limits.get(k) or v for k, v in bound.items()}
        hf_request_event_hook(request)

    return httpx2.Client(event_hooks={"request": [bounded], "response": [_check_answer]},
                         follow_redirects=True, timeout=httpx2.Timeout(hub_timeout()))


def hub_timeout() -> float:
    """Seconds a Hub request may wait for an answer (``HF_HUB_DOWNLOAD_TIMEOUT``, else 30)."""
    try:
        return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or 30)
    except ValueError:
        raise BadInput("HF_HUB_DOWNLOAD_TIMEOUT must be a number of seconds") from None


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@contextlib.contextmanager
def _answers(what: str, repo_type: str, repo_id: str, revision: str | None) -> Iterator[None]:
    """The Hub client's failures as one line each (BadInput), saying what the server
    answered."""
    import httpx2
    from huggingface_hub import errors

    endpoint = _endpoint()
    try:
        yield
    except errors.GatedRepoError:
        raise BadInput(f"{what} is gated: set HF_TOKEN to a token that was granted access"
                       + _token_note()) from None
    except errors.RevisionNotFoundError:
        raise BadInput(f"{repo_type} {repo_id!r} has no revision {revision!r}") from None
    except errors.RepositoryNotFoundError as exc:
        if _status(exc) == 401:
            raise BadInput(f"{what} was not found or needs a token: set HF_TOKEN if it is "
                           "private or gated" + _token_note()) from None
        raise BadInput(f"no {repo_type} {repo_id!r} on {endpoint}") from None
    except errors.HfHubHTTPError as exc:
        first = one_line((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]
        raise BadInput(f"{what}: {endpoint} answered HTTP {_status(exc)}: {first}") from None
    except httpx2.TimeoutException:
        raise BadInput(f"{what}: {endpoint} did not answer within {hub_timeout():g} s "
                       "(HF_HUB_DOWNLOAD_TIMEOUT)") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, httpx2.TransportError):
        raise BadInput(f"cannot reach {endpoint} (no network?), and {what} is not in the HF "
                       "cache (cached copies are used when present)") from None
    except OSError as exc:  # e.g. a file of another size than the server announced
        first = one_line((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]
        raise BadInput(f"{what}: the download from {endpoint} failed: {first}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a body that is no answer
        raise BadInput(f"{what}: {endpoint} sent an answer that is not the Hub's "
                       f"({type(exc).__name__}: {one_line(str(exc))[:120]})") from None


def _status(exc: Exception) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


@functools.cache
def _quiet() -> None:
    """Once per process: the bounded, checking HTTP client (`_client`), and quiet logs."""
    from huggingface_hub.utils import disable_progress_bars, set_client_factory

    set_client_factory(_client)
    if not sys.stderr.isatty():
        disable_progress_bars()
    for name in ("httpx", "httpx2"):  # a line per request: too much for a log
        logging.getLogger(name).setLevel(logging.WARNING)


def _what(repo_id: str, repo_type: str, revision: str | None) -> str:
    return f"{repo_type} {repo_id!r}" + (f" at revision {revision!r}" if revision else "")


def resolve_commit(repo_id: str, repo_type: str, revision: str | None = None) -> str:
    """The commit that `revision` (default: the main branch) of the repo is at, asked of the
    Hub first: 40 hex digits, or BadInput. Everything after asks for that commit, so that no
    name the server sends becomes a cache path unchecked."""
    from huggingface_hub import HfApi

    _quiet()
    check_revision(revision)
    what = _what(repo_id, repo_type, revision)
    with _answers(what, repo_type, repo_id, revision):
        sha = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    if not isinstance(sha, str) or not COMMIT.fullmatch(sha):
        raise HostileAnswer(f"{what}: {_endpoint()} answered the commit "
                            f"{one_line(str(sha)[:60])!r}, which is not 40 hex digits: refused")
    return sha


def list_files(repo_id: str, repo_type: str, commit: str) -> list[str]:
    """The paths of every file in the repo at `commit` (asks the Hub; nothing is
    downloaded); each must be a relative path of plain names."""
    from huggingface_hub import HfApi

    _quiet()
    with _answers(_what(repo_id, repo_type, commit), repo_type, repo_id, commit):
        paths = sorted(HfApi().list_repo_files(repo_id, repo_type=repo_type, revision=commit))
    for path in paths:
        if not isinstance(path, str):
            raise HostileAnswer(f"{repo_type} {repo_id!r}: the listing holds {path!r}")
        check_relative(path, f"{repo_type} {repo_id!r}: the Hub listed the file")
    return paths


def checked_listing(repo_id: str, repo_type: str,
                    revision: str | None = None) -> tuple[str, list[str]]:
    """The commit `revision` is at (`resolve_commit`) and the repo's files there, checked
    (`list_files`): what `fetch` then downloads."""
    commit = resolve_commit(repo_id, repo_type, revision)
    return commit, list_files(repo_id, repo_type, commit)


def fetch(repo_id: str, repo_type: str, commit: str,
          include: list[str] | None = None) -> Snapshot:
    """Download (or find in the cache) the files of `repo_id` (``model`` or ``dataset``) at
    `commit` (from `checked_listing`: 40 hex digits) matching `include` (globs; default:
    every file)."""
    import huggingface_hub

    if not COMMIT.fullmatch(commit):
        raise ValueError(f"fetch takes a commit from checked_listing, not {commit!r}")
    _quiet()
    what = _what(repo_id, repo_type, commit)
    with _answers(what, repo_type, repo_id, commit):
        path = Path(huggingface_hub.snapshot_download(repo_id, repo_type=repo_type,
                                                      revision=commit,
                                                      allow_patterns=include))
    log.info("%s: %d files in %s", what, sum(1 for p in path.rglob("*") if p.is_file()), path)
    return Snapshot(path, commit)


def _token_note() -> str:
    return " (HF_TOKEN is set: it has no access)" if os.environ.get("HF_TOKEN") else ""


def dataset_files(paths: list[str], name: str, subset: str | None,
                  split: str | None) -> tuple[list[str], str]:
    """The data files (repo paths) of one split (and subset) of a dataset repo, and the
    split's name. Subsets are top-level folders (``{subset}/…``); a file's split is a folder
    named like it or its name's prefix (``data/train-00000-of-00001.parquet`` is ``train``)."""
    from chatspace.data.sources import FORMATS

    files = [Path(p) for p in paths if Path(p).suffix in FORMATS
             and not Path(p).name.startswith((".", "_"))]
    if subset is not None:
        subsets = sorted({p.parts[0] for p in files if len(p.parts) > 1} - {"data"})
        files = [p for p in files if p.parts[0] == subset]
        if not files:
            raise BadInput(f"dataset {name!r} has no subset {subset!r} (subsets: "
                           f"{', '.join(subsets) or 'none'})")
    by_split: dict[str, list[str]] = {}
    for path in files:
        by_split.setdefault(_split_of(path), []).append(str(path))
    if split is None:
        if len(by_split) != 1:
            raise BadInput(f"dataset {name!r} has splits {', '.join(sorted(by_split))}: choose "
                           "one with --split")
        split = next(iter(by_split))
    if split not in by_split:
        raise BadInput(f"dataset {name!r} has no split {split!r} (splits: "
                       f"{', '.join(sorted(by_split)) or 'none'})")
    return by_split[split], split


def _split_of(relative: Path) -> str:
    for folder in relative.parts[:-1]:
        if folder in ("train", "test", "validation", "dev", "eval"):
            return folder
    return relative.name.split("-", 1)[0].split(".", 1)[0]
