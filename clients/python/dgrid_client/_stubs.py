"""Where the generated gRPC modules come from.

An installed package carries them (generated from the protos when it was built, see setup.py). In
dgrid's source tree they are generated on first import, and again whenever a .proto is newer, into
dgrid_client/_gen (ignored by git), so the client always matches the protos beside it.
"""
import os
import shutil
import sys
import threading
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "_gen")
PROTOS = ["dgrid/v1/tensor.proto", "dgrid/v1/generation.proto", "dgrid/v1/stages.proto",
          "dgrid/v1/registry.proto"]
_lock = threading.Lock()


def source_proto_root() -> str:
    """protos/ of the dgrid source tree this package sits in."""
    return os.path.abspath(os.path.join(HERE, "..", "..", "..", "protos"))


def in_source_tree() -> bool:
    """True when this is clients/python/dgrid_client of a dgrid checkout, not an installed copy."""
    return os.path.isfile(os.path.join(HERE, "..", "setup.py")) and all(
        os.path.exists(os.path.join(source_proto_root(), p)) for p in PROTOS)


def generate(proto_root: str, out_dir: str) -> None:
    """Runs protoc (grpcio-tools) on dgrid's protos: messages, their type stubs (.pyi) and the
    service stubs, as importable packages under out_dir/dgrid/v1."""
    from grpc_tools import protoc
    import importlib.resources
    os.makedirs(out_dir, exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args: List[str] = ["protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out_dir}",
                       f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [os.path.join(proto_root, p) for p in PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed for " + ", ".join(PROTOS))
    for d in (os.path.join(out_dir, "dgrid"), os.path.join(out_dir, "dgrid", "v1")):
        open(os.path.join(d, "__init__.py"), "a").close()


def ensure() -> None:
    """Makes `dgrid.v1.*_pb2` importable: regenerates them in a source tree when stale."""
    with _lock:
        if in_source_tree():
            root = source_proto_root()
            stamp = os.path.join(GEN, "dgrid", "v1", "generation_pb2_grpc.py")
            newest = max(os.path.getmtime(os.path.join(root, p)) for p in PROTOS)
            if not os.path.exists(stamp) or os.path.getmtime(stamp) < newest:
                # Generated beside and swapped in, so that another process importing at the same
                # time sees the old modules or the new ones, not half-written files.
                fresh = f"{GEN}.{os.getpid()}"
                shutil.rmtree(fresh, ignore_errors=True)
                generate(root, fresh)
                stale = f"{GEN}.old.{os.getpid()}"
                if os.path.isdir(GEN):
                    os.replace(GEN, stale)
                try:
                    os.replace(fresh, GEN)
                except OSError:  # another process swapped its copy in first
                    shutil.rmtree(fresh, ignore_errors=True)
                shutil.rmtree(stale, ignore_errors=True)
        elif not os.path.isdir(os.path.join(GEN, "dgrid")):
            raise ImportError("dgrid_client: the generated gRPC modules are missing; install the "
                              "package with pip (it generates them) or use it from dgrid's tree")
        if GEN not in sys.path:
            sys.path.insert(0, GEN)
