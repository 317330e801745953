// Compiled only to produce the precompiled header of cmake/TorchPch.cmake; it has no code.
