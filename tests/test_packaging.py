"""The two distributions: the library's wheel holds the library only, the chat's the chat.

Someone who installs ``epws`` to write a WebSocket server must get no application and
no console script; the chat is its own distribution that depends on the library. Both
wheels are built from a copy of the sources (so the build leaves nothing in the
checkout) with the test environment's setuptools, offline.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def _build_wheel(project: Path, out: Path) -> zipfile.ZipFile:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(project),
        ],
        check=True,
        env={"EPWS_BUILD_EXTENSION": "no", "PATH": "/usr/bin:/bin", "HOME": str(out)},
    )
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def _copy(src: Path, dst: Path, *names: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    for name in names:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, ignore=ignore)
        else:
            shutil.copy2(src / name, dst / name)


def test_library_wheel_has_no_application_and_no_script(tmp_path: Path) -> None:
    project = tmp_path / "epws"
    project.mkdir()
    _copy(ROOT, project, "pyproject.toml", "setup.py", "README.md", "src")
    with _build_wheel(project, tmp_path / "dist") as whl:
        names = whl.namelist()
        tops = {n.split("/", 1)[0] for n in names}
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta).decode()
    assert "epws/__init__.py" in names
    assert "epws/protocol/protocol.py" in names
    assert "epws/asgi/protocol.py" in names  # a package since the split (issue 11)
    assert "epws/py.typed" in names
    assert not any(n.startswith("epws_chat") for n in names), tops
    assert not any(n.endswith("entry_points.txt") for n in names), "a console script"
    # No required runtime dependency: only extras may name packages.
    requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    assert all("extra ==" in ln for ln in requires), requires


def test_chat_wheel_holds_the_chat_its_page_and_its_script(tmp_path: Path) -> None:
    project = tmp_path / "chat"
    shutil.copytree(
        ROOT / "chat", project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    with _build_wheel(project, tmp_path / "dist") as whl:
        names = whl.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta).decode()
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = whl.read(entry).decode()
    assert "epws_chat/cli.py" in names
    assert "epws_chat/static/home.html" in names
    assert not any(n.startswith("epws/") for n in names)
    assert "epws-chat = epws_chat.cli:main" in entry_points
    requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    assert any(ln.split(":", 1)[1].strip().startswith("epws") for ln in requires), requires
    assert any("redis" in ln and "extra ==" in ln for ln in requires), requires
