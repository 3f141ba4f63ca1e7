"""The build hook (hatch_build.py): stubs generated with package imports, in wheels, and a clear
error when a source tree has none."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("hatchling")
pytest.importorskip("grpc_tools")

import hatch_build  # after the skips: it needs both build requirements

REPO = Path(__file__).resolve().parents[2]
STUBS = [path.as_posix() for path in hatch_build.stub_paths()]


def _copy_project_without_stubs(target: Path) -> Path:
    """The files a build needs, as in a fresh checkout: no generated stubs, no caches."""
    generated = shutil.ignore_patterns("*_pb2*.py", "*_pb2*.pyi", "__pycache__", "*.partial")
    shutil.copytree(REPO / "duratask", target / "duratask", ignore=generated)
    for name in ("pyproject.toml", "hatch_build.py", ".gitignore", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, target / name)
    return target


def test_stub_paths_sit_next_to_the_proto() -> None:
    assert STUBS == [
        "duratask/protocol/orchestrator_service_pb2.py",
        "duratask/protocol/orchestrator_service_pb2.pyi",
        "duratask/protocol/orchestrator_service_pb2_grpc.py",
    ]


def test_generate_stubs_writes_package_imports_and_the_private_pool(tmp_path: Path) -> None:
    root = _copy_project_without_stubs(tmp_path)
    written = hatch_build.generate_stubs(root)
    assert [path.relative_to(root).as_posix() for path in written] == STUBS
    grpc_module = (root / STUBS[2]).read_text()
    assert "from duratask.protocol import orchestrator_service_pb2 as" in grpc_module
    assert "\nimport orchestrator_service_pb2" not in grpc_module
    assert "'/TaskHubSidecarService/StartInstance'" in grpc_module
    messages_module = (root / STUBS[0]).read_text()
    assert "_descriptor_pool.Default()" not in messages_module
    assert "DESCRIPTOR = _private_pool.add_serialized_file(" in messages_module
    assert not list(root.rglob("*.partial"))


def test_generate_stubs_reports_a_broken_proto(tmp_path: Path) -> None:
    root = _copy_project_without_stubs(tmp_path)
    proto = root / hatch_build.PROTO
    proto.write_text(proto.read_text() + "\nmessage Broken { NoSuchType field = 1; }\n")
    with pytest.raises(RuntimeError, match="protoc failed"):
        hatch_build.generate_stubs(root)
    assert not (root / STUBS[0]).exists()


def test_unexpected_protoc_output_stops_the_build() -> None:
    with pytest.raises(RuntimeError, match="update hatch_build.py"):
        hatch_build._use_private_pool("DESCRIPTOR = something_else()\n")


def test_wheel_from_a_fresh_tree_contains_the_stubs(tmp_path: Path) -> None:
    root = _copy_project_without_stubs(tmp_path / "src")
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(root),
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("duratask-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(STUBS) <= names
    assert {"duratask/protocol/orchestrator_service.proto", "duratask/protocol/convert.py"} <= names


def test_source_tree_without_stubs_says_how_to_get_them(tmp_path: Path) -> None:
    root = _copy_project_without_stubs(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import duratask.protocol"],
        check=False,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install -e ." in result.stderr
