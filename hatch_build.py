"""Hatchling build hook: generate the protocol's Python stubs from its ``.proto``.

Runs for every wheel build, standard and editable (``pip install -e .``), and writes
``orchestrator_service_pb2.py``, ``_pb2.pyi`` and ``_pb2_grpc.py`` next to the ``.proto`` in
``duratask/protocol/``. They are git-ignored, so they are declared build artifacts to get into
the wheel. After editing the ``.proto`` without reinstalling: ``python hatch_build.py``.

The ``.proto`` is compiled under its package path (``-I <repo root>``), so the gRPC module
imports ``from duratask.protocol import orchestrator_service_pb2`` rather than a top-level
``orchestrator_service_pb2``.

One edit is made to protoc's output: the generated module registers its descriptors in
duratask's private pool instead of protobuf's default pool (see
``duratask/protocol/_private_pool.py`` for why).
"""

from __future__ import annotations

import os
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PROTO = Path("duratask/protocol/orchestrator_service.proto")
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_DEFAULT_POOL_CALL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_CALL = "_private_pool.add_serialized_file("
_IMPORTS_INSERTION_POINT = "# @@protoc_insertion_point(imports)\n"
_PRIVATE_POOL_IMPORT = "from duratask.protocol import _private_pool\n"


def stub_paths() -> list[Path]:
    """The generated files, relative to the repository root."""
    stem = PROTO.with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in STUB_SUFFIXES]


def generate_stubs(root: Path) -> list[Path]:
    """Compile ``PROTO`` under ``root``; return the paths written. Raises on any protoc error."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # a build requirement only

    well_known_types = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as out:
        exit_code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={root}",
                f"--proto_path={well_known_types}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(root / PROTO),
            ]
        )
        if exit_code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit code {exit_code}); see its message above")
        written = []
        for relative in stub_paths():
            text = (Path(out) / relative).read_text(encoding="utf-8")
            if relative.name.endswith("_pb2.py"):
                text = _use_private_pool(text)
            written.append(_replace_file(root / relative, text))
    return written


def _use_private_pool(generated: str) -> str:
    for marker in (_DEFAULT_POOL_CALL, _IMPORTS_INSERTION_POINT):
        if generated.count(marker) != 1:
            raise RuntimeError(f"protoc's output no longer contains {marker!r} once; update hatch_build.py")
    return generated.replace(_DEFAULT_POOL_CALL, _PRIVATE_POOL_CALL).replace(
        _IMPORTS_INSERTION_POINT, _IMPORTS_INSERTION_POINT + _PRIVATE_POOL_IMPORT
    )


def _replace_file(target: Path, text: str) -> Path:
    # Write then rename, so a concurrent import never sees half a module.
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, target)
    return target


class ProtocolStubsBuildHook(BuildHookInterface[Any]):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        generate_stubs(Path(self.root))
        # hatchling leaves VCS-ignored files out of wheels unless they are declared artifacts.
        build_data["artifacts"].extend(f"/{path.as_posix()}" for path in stub_paths())


if __name__ == "__main__":
    for path in generate_stubs(Path(__file__).resolve().parent):
        print(f"wrote {path}", file=sys.stderr)
