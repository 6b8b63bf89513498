// at::ScalarType -> the DType the CUDA launchers take. Torch glue only: .cu files never include this.
#pragma once
#include <ATen/ATen.h>

#include "dtype.h"

namespace wslfast {

// `what` names the argument in the error, e.g. "soft_ce (CUDA): logits".
inline DType cuda_dtype_of(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, what, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

}  // namespace wslfast
