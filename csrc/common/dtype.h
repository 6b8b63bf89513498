// The storage dtypes a kernel launcher takes, without torch headers (.cu files stay torch-free).
#pragma once
#include <cstdint>

struct CUstream_st;  // cudaStream_t without the CUDA headers

namespace wslfast {
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
}  // namespace wslfast
