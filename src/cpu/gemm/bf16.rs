//! BF16 GEMM: operands rounded to bfloat16, products accumulated in fp32. (Stub: being written.)
