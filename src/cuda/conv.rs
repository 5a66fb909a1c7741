//! The convolution ladder's launch code (`kernels/conv.cu`): a direct kernel for VGG's first
//! layer, implicit GEMM on CUDA cores and tensor cores, fused max pools.
