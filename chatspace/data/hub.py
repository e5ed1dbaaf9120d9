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
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chatspace.errors import BadInput

log = logging.getLogger(__name__)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (then only the local caches are read)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Snapshot:
    """A repo's files at one commit, in the HF cache."""

    path: Path
    commit: str


@contextlib.contextmanager
def _answers(what: str, repo_type: str, repo_id: str, revision: str | None) -> Iterator[None]:
    """The Hub client's failures as one line each (BadInput)."""
    from huggingface_hub import errors

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        yield
    except errors.GatedRepoError:
        raise BadInput(f"{what} is gated: set HF_TOKEN to a token that was granted access"
                       + _token_note()) from None
    except errors.RevisionNotFoundError:
        raise BadInput(f"{repo_type} {repo_id!r} has no revision {revision!r}") from None
    except errors.RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise BadInput(f"{what} was not found or needs a token: set HF_TOKEN if it is "
                           "private or gated" + _token_note()) from None
        raise BadInput(f"no {repo_type} {repo_id!r} on {endpoint}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as exc:
        if isinstance(exc, errors.HfHubHTTPError):
            raise
        raise BadInput(f"cannot reach {endpoint} (no network?), and {what} is not in the HF "
                       "cache (cached copies are used when present)") from None
    except errors.HfHubHTTPError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{what}: the Hub answered {first}") from None


def _quiet() -> None:
    from huggingface_hub.utils import disable_progress_bars

    if not sys.stderr.isatty():
        disable_progress_bars()
    for name in ("httpx", "httpx2"):  # a line per request: too much for a log
        logging.getLogger(name).setLevel(logging.WARNING)


def _what(repo_id: str, repo_type: str, revision: str | None) -> str:
    return f"{repo_type} {repo_id!r}" + (f" at revision {revision!r}" if revision else "")


def list_files(repo_id: str, repo_type: str, revision: str | None = None) -> list[str]:
    """The paths of every file in the repo at `revision` (asks the Hub; nothing is
    downloaded)."""
    from huggingface_hub import HfApi

    _quiet()
    with _answers(_what(repo_id, repo_type, revision), repo_type, repo_id, revision):
        return sorted(HfApi().list_repo_files(repo_id, repo_type=repo_type, revision=revision))


def fetch(repo_id: str, repo_type: str, revision: str | None = None,
          include: list[str] | None = None) -> Snapshot:
    """Download (or find in the cache) the files of `repo_id` (``model`` or ``dataset``) at
    `revision` matching `include` (globs; default: every file)."""
    import huggingface_hub

    _quiet()
    what = _what(repo_id, repo_type, revision)
    with _answers(what, repo_type, repo_id, revision):
        path = Path(huggingface_hub.snapshot_download(repo_id, repo_type=repo_type,
                                                      revision=revision,
                                                      allow_patterns=include))
    log.info("%s: %d files at commit %s in %s", what,
             sum(1 for p in path.rglob("*") if p.is_file()), path.name, path)
    return Snapshot(path, path.name)


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
