"""The built wheel works on its own: installed in a fresh venv, run outside the checkout, it migrates and imports."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = [
    "batcher/migrations/__init__.py",
    "batcher/migrations/env.py",
    "batcher/migrations/script.py.mako",
    "batcher/migrations/versions/__init__.py",
    "batcher/migrations/versions/0001_job_store.py",
    "batcher/migrations/versions/0002_runs_and_streaming.py",
    "batcher/migrations/versions/0005_api_batches.py",
]


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the checkout."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "BATCHER_DB", "PYTHONSAFEPATH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (the checkout itself gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("batcher\n")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "batcher", src / "batcher", ignore=ignore)
    shutil.copytree(ROOT / "migrations", src / "migrations", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, src, cwd=src)
    (built,) = out.glob("batcher-*.whl")
    return built


def test_wheel_ships_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(MIGRATIONS) <= names
    assert "batcher/cli.py" in names and "batcher/importer.py" in names
    # The migrations live in the package, not as a stray top-level one.
    assert not any(n.startswith("migrations/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "batcher = batcher.cli:main" in entry_points


def test_installed_wheel_imports_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python, batcher = venv / "bin" / "python", venv / "bin" / "batcher"
    # The wheel alone, installed by this environment's pip into the new venv...
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet",
        "--disable-pip-version-check", wheel)
    # ...and its dependencies borrowed from this environment's site-packages. That folder holds
    # no batcher package (the development install is a path hook, activated by a .pth file that
    # is not processed from here), so only the wheel's batcher can be imported.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    (site / "_deps_from_dev_env.pth").write_text(sysconfig.get_path("purelib") + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = clean_env()
    where = run(python, "-c", "import batcher, batcher.cli, batcher.migrations.versions as v, sqlalchemy;"
                "print(batcher.__file__); print(v.__path__[0])", cwd=outside, env=env).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    assert (Path(where[1]) / "0001_job_store.py").is_file()

    (outside / "small.jsonl").write_text(
        '{"custom_id": "q1", "prompt": "Hello?"}\n'
        '{"custom_id": "q2", "params": {"messages": [{"role": "user", "content": "Bye?"}]}, "tag": "t"}\n')
    done = run(batcher, "import", "small.jsonl", "--model", "claude-haiku-4.5", "--max-tokens", "32",
               cwd=outside, env=env)
    assert done.stdout == "batch small: 2 added, 0 unchanged, 0 rejected\n"
    db = outside / "batcher.db"
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        newest = max(p.name.split("_")[0] for p in (Path(__file__).parents[1] / "migrations" / "versions").glob("0*.py"))
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (newest,)
        assert conn.execute("SELECT custom_id, status FROM jobs ORDER BY line").fetchall() == [
            ("q1", "pending"), ("q2", "pending")]
        assert "runs" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    status = run(batcher, "status", "--json", cwd=outside, env=env)
    assert '"total": 2' in status.stdout
