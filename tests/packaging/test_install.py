"""The wheel, installed as users install it, in fresh virtualenvs.

* ``pip install flagrail``: the SDK, the cache toolkit and the pytest plugin import and
  work with no server dependency present (no FastAPI, SQLAlchemy, ...); the ``flagrail``
  command answers with one line naming ``pip install "flagrail[server]"``.
* ``pip install "flagrail[server]"``: the CLI runs, ``flagrail db upgrade`` and
  ``flagrail db check`` work on a SQLite file with the migrations the wheel ships.
* The wheel holds only ``flags`` and ``api``: no top-level ``migrations`` or ``examples``.

The wheel is built once per test session (shared by xdist workers, under a file lock)
from a copy of the working tree. Each test's virtualenv is made without pip (ensurepip
took ~10 s of each test) and the test runner's own pip installs into it with ``--python``.
Dependencies install from a wheelhouse, ``.cache/wheelhouse`` (git-ignored), that
``pip download`` fills from the configured indexes whenever it lacks one: the first run
downloads as before, later runs install offline. Delete it to test against newer
releases of the dependencies.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flags.testing import wait_for
from flags.testing.redis_server import free_port

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO_ROOT / ".cache" / "wheelhouse"
SOURCES = ("pyproject.toml", "README.md", "flags", "api", "migrations")
# Distributions of the server extra: none may be in an SDK-only install.
SERVER_DISTRIBUTIONS = {
    "alembic",
    "fastapi",
    "psycopg",
    "psycopg-binary",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "sqlalchemy",
    "starlette",
    "typer",
    "uvicorn",
}
SERVER_INSTALL = 'pip install "flagrail[server]"'
SDK_PROBE = """
import importlib.metadata, importlib.util, sys
import flags, flags.cache, flags.cache.redis, flags.sync, flags.testing.plugin
from flags import FlagClient
from flags.cache import LayeredCache
installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
print("server-distributions:", sorted(installed & set(sys.argv[1].split(","))))
for module in ("fastapi", "sqlalchemy", "alembic", "typer", "uvicorn", "pydantic"):
    assert importlib.util.find_spec(module) is None, module
assert flags.__file__.startswith(sys.prefix), flags.__file__
print("sdk-ok")
"""
PLUGIN_PROBE = """
import pytest

from flags import FlagClient


def test_flag_client__fixture__is_a_client(flag_client):
    assert isinstance(flag_client, FlagClient)


@pytest.mark.flag_matrix("probe.flag")
def test_flag_matrix__one_flag__two_runs(flag_client):
    assert flag_client.is_enabled("probe.flag") in (True, False)
"""


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let the repository leak in."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"} and not k.startswith("FLAGRAIL_")
    }


def _run(
    args: list[str | Path], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The flagrail wheel built from the working tree, once for all xdist workers."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    shared = shared / "flagrail-wheel"
    shared.mkdir(exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = sorted((shared / "dist").glob("flagrail-*.whl"))
        if built:
            return built[0]
        source = shared / "source"
        shutil.rmtree(source, ignore_errors=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        for name in SOURCES:
            path = REPO_ROOT / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=ignore)
            else:
                source.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, source / name)
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
        _ok(_run([*pip, "-w", shared / "dist", source], cwd=shared))
        return sorted((shared / "dist").glob("flagrail-*.whl"))[0]


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[Path]:
    """A fresh virtualenv of this test's own (no pip in it: see ``_pip_install``); its bin
    directory."""
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv"], cwd=tmp_path))
    yield tmp_path / "venv" / "bin"


def _pip_install(venv: Path, *requirements: str | Path, cwd: Path) -> None:
    """``pip install`` of ``requirements`` into ``venv`` (and only there), by this
    interpreter's pip targeting the virtualenv's python, from WHEELHOUSE; when that lacks
    a distribution, ``pip download`` adds what is missing (under a lock) and it retries."""
    pip = [sys.executable, "-m", "pip"]
    install = [*pip, "--python", venv / "python", "install", "-q", "--no-compile"]
    offline = [*install, "--no-index", "--find-links", WHEELHOUSE, *requirements]
    if _run(offline, cwd=cwd).returncode == 0:
        return
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    with (WHEELHOUSE.parent / ".wheelhouse.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ok(_run([*pip, "download", "-q", "-d", WHEELHOUSE, *requirements], cwd=cwd))
        for built in WHEELHOUSE.glob("flagrail-*.whl"):
            built.unlink()  # the wheel under test comes from the session's build only
    _ok(_run(offline, cwd=cwd))


def test_wheel__contents__only_flags_and_api_with_the_migrations_inside(wheel: Path) -> None:
    """Top-level packages are flags and api; the migrations ship as flags.store.migrations."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert top_level == {"api", "flags"}
    for required in (
        "flags/store/migrations/env.py",
        "flags/store/migrations/script.py.mako",
        "flags/store/migrations/versions/0001_core.py",
        "flags/store/migrations/versions/0004_merge.py",
        "flags/store/migrations/versions/0005_history_truncate.py",
        "flags/store/migrations/versions/0007_console.py",
        "flags/testing/plugin.py",
        "api/demo/scenario.py",
    ):
        assert required in names, required
    versions = {Path(n).name for n in names if n.startswith("flags/store/migrations/versions/")}
    in_repository = {p.name for p in (REPO_ROOT / "migrations" / "versions").glob("*.py")}
    assert versions == in_repository


def test_sdk_install__no_server_dependencies__sdk_cache_and_plugin_work(
    wheel: Path, venv: Path, tmp_path: Path
) -> None:
    """``pip install flagrail`` (+ pytest): imports, the plugin's fixtures, a clear CLI line."""
    _pip_install(venv, wheel, "pytest", cwd=tmp_path)

    out = _ok(
        _run([venv / "python", "-c", SDK_PROBE, ",".join(SERVER_DISTRIBUTIONS)], cwd=tmp_path)
    )
    assert "server-distributions: []" in out
    assert "sdk-ok" in out

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "test_probe.py").write_text(PLUGIN_PROBE)
    result = _run([venv / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=probe)
    assert "3 passed" in _ok(result)

    for argv in (["--help"], ["serve"], ["db", "upgrade"], ["flags", "list"]):
        result = _run([venv / "flagrail", *argv], cwd=tmp_path)
        assert result.returncode == 1, argv
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("flagrail: error: ")
        assert SERVER_INSTALL in lines[0]


def test_server_install__cli__migrates_checks_and_serves_a_sqlite_file(
    wheel: Path, venv: Path, tmp_path: Path
) -> None:
    """``pip install "flagrail[server]"``: the CLI runs; db upgrade then db check are clean;
    ``flagrail serve`` (the README's first command) answers with its first admin token."""
    _pip_install(venv, f"{wheel}[server]", cwd=tmp_path)

    assert "serve" in _ok(_run([venv / "flagrail", "--help"], cwd=tmp_path))
    url = f"sqlite:///{tmp_path / 'flagrail.db'}"
    upgrade = _run([venv / "flagrail", "db", "upgrade", "--database-url", url], cwd=tmp_path)
    assert "schema is current" in _ok(upgrade) + upgrade.stderr
    check = _run([venv / "flagrail", "db", "check", "--database-url", url], cwd=tmp_path)
    _ok(check)
    assert "no drift" in check.stderr
    where = _run(
        [venv / "python", "-c", "import flags.store.schema as s; print(s.migrations_directory())"],
        cwd=tmp_path,
    )
    assert Path(_ok(where).strip()).is_relative_to(venv.parent.resolve())

    port = free_port()
    serve = subprocess.Popen(
        [venv / "flagrail", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        assert "first admin token" in serve.stdout.readline()
        token = Path(serve.stdout.readline().strip()).read_text().strip()
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/healthz"), 60, "flagrail serve")
        flags = httpx.get(f"{base}/admin/flags", headers={"Authorization": f"Bearer {token}"})
        assert flags.status_code == 200
    finally:
        serve.terminate()
        serve.communicate(timeout=30)
    assert (tmp_path / "flagrail.db").is_file()  # the default database, in the directory


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
