// Host build of the kernels (tests/ops/kernel_emu): the CUDA language comes from emu.h.
#pragma once
#include "emu.h"
