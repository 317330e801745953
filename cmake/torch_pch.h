// The header precompiled by cmake/TorchPch.cmake (DGRID_PCH): the LibTorch headers that most dgrid
// files include. Adding a header here makes every LibTorch-using file see it, so keep it to
// headers those files already include.
#pragma once
#include <ATen/ATen.h>
