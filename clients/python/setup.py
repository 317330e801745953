"""Builds dgrid_client with its gRPC modules generated from dgrid's protos (grpcio-tools):
`pip install clients/python` in a dgrid checkout reads protos/ two folders up.
"""
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "dgrid_client"))
import _stubs  # noqa: E402


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        package = os.path.join(self.build_lib, "dgrid_client")
        root = _stubs.source_proto_root()
        if not _stubs.in_source_tree():
            raise RuntimeError(f"dgrid's protos are not at {root}: build from a dgrid checkout")
        shutil.rmtree(os.path.join(package, "_gen"), ignore_errors=True)
        _stubs.generate(root, os.path.join(package, "_gen"))


setup(cmdclass={"build_py": BuildWithStubs})
