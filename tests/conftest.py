"""Shared fixtures: the dev SLURM cluster, the Apptainer test image, real data files, the real
bundled model and tiny models (plain helpers are in tests/helpers.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from tests.helpers import PYDOCS, REPO  # noqa: E402

SLURM_MAX_ARRAY_SIZE = 5


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """The dev cluster (started in the background from collection, see `Background`), with
    SLURM_CONF exported; skip, saying why, if it cannot start."""
    try:
        out = CLUSTER_START.wait(timeout=900)  # it prints the conf, started or found running
    except (OSError, subprocess.TimeoutExpired, RuntimeError) as exc:
        pytest.skip(f"the dev SLURM cluster could not start: {exc}")
    conf = out.strip().splitlines()[-1].split("=", 1)[1]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", conf)  # for the tests' own sbatch/squeue and the CLI's
        yield conf


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def st_model():
    from sentence_transformers import SentenceTransformer

    from chatspace.kinds.embed.st_model import resolve_model

    return SentenceTransformer(resolve_model(None).path, device="cpu")


@pytest.fixture
def small_jsonl(tmp_path: Path) -> Path:
    """120 real passages plus rows that must be skipped (empty, whitespace, null, number)."""
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:120]]
    rows[5]["text"] = ""
    rows[17]["text"] = "   \n "
    rows[33]["text"] = None
    rows[48]["text"] = 42
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Background:
    """A set-up command (minutes on a new machine) started in the background as soon as the
    collected tests include one that needs it, so that it overlaps the tests that do not; the
    first test that needs it waits for it."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"chatspace-{name}-{os.getpid()}.log"

    def start(self) -> None:
        if self.proc is None:
            with open(self.log, "wb") as err:
                self.proc = subprocess.Popen(self.command, cwd=REPO, text=True,
                                             stdout=subprocess.PIPE, stderr=err,
                                             stdin=subprocess.DEVNULL, start_new_session=True)

    def finish(self, interrupted: bool) -> None:
        """Let it finish (another test worker may be waiting for it), or end it when the
        session was interrupted."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if interrupted:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()

    def wait(self, timeout: float) -> str:
        """Its stdout once it succeeded; RuntimeError (the end of its log) if it failed,
        subprocess.TimeoutExpired if it did not end in time."""
        self.start()
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if self.proc.returncode != 0:
            raise RuntimeError(self.log.read_text(errors="replace").strip()[-500:])
        return out


# A real Apptainer (containers/dev-apptainer.sh) and the test image built from this checkout
# (containers/dev-image.sh, cached by the lock file), under a lock: test workers build it once.
IMAGE_BUILD = Background("image", ["bash", "-c", (
    'set -o pipefail; exec 9>/tmp/chatspace-image-build.lock; flock 9; '
    'a=$(containers/dev-apptainer.sh 9>&- | tail -n 1) && '
    'i=$(PATH="$(dirname "$a"):$PATH" containers/dev-image.sh 9>&- | tail -n 1) && '
    'echo "$a" && echo "$i"')])
# The dev cluster with a small MaxArraySize, started (or found running) one start at a time:
# test workers share the one cluster (-o: the daemons the script starts must not inherit, and
# keep, the lock). Its first start installs SLURM and MariaDB (apt-get) and initialises them.
CLUSTER_START = Background("cluster", [
    "flock", "-o", "/tmp/chatspace-dev-cluster.lock", "env",
    f"CHATSPACE_SLURM_MAX_ARRAY_SIZE={SLURM_MAX_ARRAY_SIZE}",
    str(REPO / "hpc" / "dev-cluster.sh"), "start"])


# `pytest -m "not slow"` (minutes) while developing; the whole suite before a push. Slow: the
# modules that start vLLM engines or drive SLURM, every test of a tiny model, the cluster or
# the image, and the slowest of the others (over ~15 s each, measured on two workers).
SLOW_MODULES = {"test_steering_vllm", "test_tensor_parallel", "test_compat", "test_steer_job",
                "test_slurm", "test_hand_runs", "test_container", "test_steering_hf",
                "test_chat", "test_hub", "test_vectors"}
SLOW_FIXTURES = {"slurm_cluster", "real_image", "tiny_model_dir", "st_model"}
SLOW_TESTS = {
    "test_attempts": {"test_the_manifest_is_shown_only_while_it_is_current"},
    "test_chat_and_download": {"test_first_assistant_extraction"},
    "test_cli_light": {"test_submit_to_slurm_imports_no_model_stack"},
    "test_formats": {"test_records_of_the_previous_release_still_read"},
    "test_hostile": {"test_a_lease_link_on_a_finished_run_truncates_nothing"},
    "test_openai": {"test_faults_on_30_percent_of_requests_lose_nothing",
                    "test_local_run_verifies_and_vectors_are_the_servers"},
    "test_results": {"test_embed_report_in_a_browser"},
    "test_safety": {"test_a_moved_root_still_reads_and_resumes_into_its_new_place",
                    "test_a_torn_completion_record_is_a_task_not_done_and_resume_redoes_it",
                    "test_resume_and_cancel_of_a_never_submitted_run_do_not_need_slurm",
                    "test_sigterm_to_a_local_submit_stops_its_tasks_and_resume_continues",
                    "test_temp_files_beside_records_are_not_records"},
    "test_spine": {"test_a_done_task_whose_output_is_gone_is_lost_and_resume_reruns_only_it",
                   "test_array_size_changes_neither_rows_nor_vectors",
                   "test_compiled_model_matches_eager", "test_embed_hf_is_a_one_process_run",
                   "test_killed_task_shard_matches_its_own_uninterrupted_rerun",
                   "test_local_and_debug_executors_write_identical_shards",
                   "test_local_executor_gives_each_worker_its_own_gpu",
                   "test_rerun_gives_byte_identical_shard",
                   "test_sigkill_midway_resumes_from_last_part", "test_submit_cli_end_to_end"},
}


def _slow(item: pytest.Item) -> bool:
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    name = getattr(item, "originalname", item.name)
    return (module in SLOW_MODULES or name in SLOW_TESTS.get(module, ())
            or bool(SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))))


def pytest_itemcollected(item: pytest.Item) -> None:
    """Slow tests are marked `slow` (as they are collected: before -m selects)."""
    if _slow(item):
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Container tests run last, and their image and the dev cluster start now, in the
    background (only when a selected test needs them, and not for --collect-only)."""
    if config.option.collectonly:
        return

    def needing(fixture: str) -> set[int]:
        return {id(item) for item in items if fixture in getattr(item, "fixturenames", ())}
    needs_image = needing("real_image")
    if needs_image:
        items[:] = [i for i in items if id(i) not in needs_image] + \
            [i for i in items if id(i) in needs_image]
        IMAGE_BUILD.start()
    if needing("slurm_cluster"):
        CLUSTER_START.start()


def pytest_sessionfinish(exitstatus: int) -> None:
    for setup in (IMAGE_BUILD, CLUSTER_START):
        setup.finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)


@pytest.fixture(scope="session")
def real_image() -> Iterator[Path]:
    """The test image (see `IMAGE_BUILD`), with its apptainer put on PATH for the jobs; skip,
    saying why, where it cannot be set up."""
    try:
        apptainer, image = map(Path, IMAGE_BUILD.wait(timeout=2400).strip().splitlines()[-2:])
    except subprocess.TimeoutExpired:
        pytest.skip("the Apptainer test image did not build within 2400 s")
    except RuntimeError as exc:
        pytest.skip(f"Apptainer or the test image could not be set up: {exc}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", f"{apptainer.parent}:{os.environ['PATH']}")  # jobs inherit it
        yield image


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`tiny_model_dir(shape)`: a tiny random-weight Qwen2/Qwen3/Llama model directory with a
    trained tokenizer (tests/tiny_models.py), built once per test run and shape."""
    from tests.tiny_models import build_model

    built: dict[str, Path] = {}

    def get(shape: str) -> Path:
        if shape not in built:
            built[shape] = build_model(tmp_path_factory.mktemp(f"tiny-{shape}"), shape)
        return built[shape]
    return get
