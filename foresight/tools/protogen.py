"""Generate the Python code of `protos/` (messages, gRPC stubs, .pyi stubs).

`make proto` runs `python -m foresight.tools.protogen .`; the staleness test runs it
into a temporary folder and compares with the committed files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOS = REPO / "protos"
PACKAGES = (
    "foresight/api",
    "foresight/api/common",
    "foresight/api/trainer",
    "foresight/api/scorer",
    "foresight/api/segmenter",
)


def proto_files() -> list[Path]:
    """Every .proto file of the contract."""
    return sorted(PROTOS.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Generate into `out`; returns the generated files (relative to `out`)."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    # protoc finds the mypy-protobuf plugins on PATH: they sit next to this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p.relative_to(out) for p in (out / "foresight" / "api").rglob("*_pb2*"))
    for pkg in PACKAGES:
        for sub in [out / pkg, *(out / pkg).glob("v*")]:
            if sub.is_dir():
                (sub / "__init__.py").touch()
    return generated


if __name__ == "__main__":
    files = generate(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"generated {len(files)} files")
