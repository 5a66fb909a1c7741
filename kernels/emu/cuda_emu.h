// cuda_emu.h — the CUDA built-ins on the CPU, so that keel's .cu sources run as plain C++20.
//
// Why: there is no GPU on the development machines, but a kernel that is wrong on the CPU is
// wrong on the GPU too. Compiling the *same* source with g++ against this header checks
// indexing, bounds, barriers (ThreadSanitizer sees a missing __syncthreads as a data race),
// warp exchanges and the tensor-core fragment layouts. It cannot check speed, the inline-PTX
// strings themselves (prelude.cuh has separate GPU versions), or blocks that talk to each other.
//
// Model (see kernels/README.md):
//   * one OS thread per CUDA thread (small pthread stacks); the blocks of a grid run one after
//     another, so `__shared__` can be plain static storage; launches are serialised by a mutex;
//   * __syncthreads() is a barrier that threads which have returned leave; all threads must
//     reach the same call site (a divergent barrier is reported, not silently matched), and a
//     watchdog turns a barrier nobody will complete into an error returned by the launch;
//   * warp operations (shuffles, ballot, mma, ldmatrix) are exchanges among the 32 threads
//     of consecutive linear thread ids: every lane deposits its operands, the last lane to
//     arrive computes every lane's result;
//   * cp.async copies are deferred until the cp.async.wait_group that covers them — the latest
//     moment the GPU may complete them — so a kernel that reads a tile before waiting for it
//     reads stale (NaN-poisoned) data here too.
//
// Build: g++ -std=c++20 -pthread -I kernels, with KEEL_EMU defined (see kernels/README.md and
// emu/driver.cpp). Environment: KEEL_EMU_WATCHDOG_S (default 20), KEEL_EMU_STACK_KB (256).
#pragma once

#ifndef KEEL_EMU
#error "cuda_emu.h is the CPU build of the kernels: #define KEEL_EMU 1 before including it"
#endif

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Qualifiers. `__restrict__` is already a g++ keyword.
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __grid_constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Blocks run one after another, so one static copy per declaration is the block's shared
// memory. Aligned to 16 so float4 views of a shared array are legal, as on the GPU.
// (`extern __shared__` becomes `extern static` and does not compile: use KEEL_DYNAMIC_SMEM.)
#define __shared__ static __attribute__((aligned(16)))

// ---------------------------------------------------------------------------------------------
// Vector types (same sizes and alignments as CUDA's).
// ---------------------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// Per-CUDA-thread coordinates: each OS thread sets its own before running the kernel.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Runtime: blocks, barriers, warp exchanges, launch.
// ---------------------------------------------------------------------------------------------
namespace keel_emu {

using Clock = std::chrono::steady_clock;

// Thrown inside a CUDA thread to unwind it once the block has failed (the message is kept
// in the block). Kernel code never catches it: kernels have no try/catch.
struct KernelAbort {};

inline double watchdog_seconds() {
    static const double s = [] {
        const char* e = std::getenv("KEEL_EMU_WATCHDOG_S");
        double v = e ? std::atof(e) : 20.0;
        return v > 0 ? v : 20.0;
    }();
    return s;
}

inline size_t stack_bytes() {
    static const size_t s = [] {
        const char* e = std::getenv("KEEL_EMU_STACK_KB");
        long kb = e ? std::atol(e) : 256;
        return size_t(std::max(kb, 64L)) * 1024;
    }();
    return s;
}

// One pending cp.async copy (performed at the wait that covers it).
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes;      // cp-size: 4, 8 or 16
    unsigned src_bytes;  // bytes read from src; the rest of dst is zero-filled
};

struct Warp {
    std::condition_variable cv;
    unsigned exist = 0;     // lanes that exist (the last warp of a block may be partial)
    unsigned exited = 0;    // lanes that have returned
    unsigned arrived = 0;   // lanes waiting in the current operation
    uint64_t gen = 0;       // completed operations
    int op_kind = 0;
    unsigned op_mask = 0;
    int op_line = 0;
    alignas(16) unsigned char in[32][64];   // each lane's operands
    alignas(16) unsigned char out[32][64];  // each lane's results
};

struct Block {
    std::mutex mu;
    std::condition_variable cv;  // __syncthreads
    unsigned n_threads = 0, live = 0;
    unsigned arrived = 0;
    uint64_t gen = 0;
    const char* bar_file = nullptr;
    unsigned bar_line = 0;
    int bar_count = 0, bar_result = 0;  // for __syncthreads_count/and/or: predicates set,
    unsigned bar_total = 0;             // and threads taking part, of the last completed round
    Clock::time_point progress = Clock::now();
    bool failed = false;
    std::string error;
    std::vector<std::unique_ptr<Warp>> warps;
    unsigned char* dynamic_smem = nullptr;
};

struct ThreadCtx {
    Block* block = nullptr;
    unsigned linear = 0, warp = 0, lane = 0;
    std::vector<AsyncCopy> uncommitted;
    std::deque<std::vector<AsyncCopy>> committed;
};
inline thread_local ThreadCtx* t_ctx = nullptr;

inline ThreadCtx& ctx() {
    if (!t_ctx) {
        std::fprintf(stderr, "keel_emu: a CUDA built-in was called outside a kernel launch\n");
        std::abort();
    }
    return *t_ctx;
}

// Record the block's first error, wake every waiter, unwind this thread. Caller holds b.mu.
[[noreturn]] inline void fail_locked(Block& b, const std::string& msg) {
    if (!b.failed) {
        b.failed = true;
        b.error = msg;
    }
    b.cv.notify_all();
    for (auto& w : b.warps) w->cv.notify_all();
    throw KernelAbort{};
}

[[noreturn]] inline void fail(const std::string& msg) {
    Block& b = *ctx().block;
    std::unique_lock<std::mutex> lk(b.mu);
    fail_locked(b, msg);
}

inline std::string where(const std::source_location& loc) {
    return std::string(loc.file_name()) + ":" + std::to_string(loc.line());
}

inline std::string thread_name() {
    char buf[96];
    std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", threadIdx.x,
                  threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z);
    return buf;
}

// Wait on `cv` until `done()`, failing the block if nobody makes progress for the watchdog's
// time (a barrier some threads never reach: they wait in another one, or loop forever).
template <class Done>
inline void wait_or_watchdog(Block& b, std::unique_lock<std::mutex>& lk,
                             std::condition_variable& cv, Done done, const char* what) {
    const auto limit = std::chrono::duration<double>(watchdog_seconds());
    while (!done()) {
        if (b.failed) throw KernelAbort{};
        cv.wait_for(lk, std::chrono::milliseconds(100));
        if (b.failed) throw KernelAbort{};
        if (!done() && Clock::now() - b.progress > limit) {
            char buf[256];
            std::snprintf(buf, sizeof buf,
                          "watchdog: %s made no progress for %.0f s (divergent barrier or "
                          "deadlock; %u of %u live threads at __syncthreads)",
                          what, watchdog_seconds(), b.arrived, b.live);
            fail_locked(b, buf);
        }
    }
}

// __syncthreads and its reducing forms. Every live thread must arrive at the same call site.
// Returns how many participants had `pred` != 0 (and, in *total, how many took part).
inline int block_barrier(int pred, const std::source_location& loc, unsigned* total = nullptr) {
    ThreadCtx& t = ctx();
    Block& b = *t.block;
    std::unique_lock<std::mutex> lk(b.mu);
    if (b.failed) throw KernelAbort{};
    if (b.arrived == 0) {
        b.bar_file = loc.file_name();
        b.bar_line = loc.line();
        b.bar_count = 0;
    } else if (b.bar_line != loc.line() || std::strcmp(b.bar_file, loc.file_name()) != 0) {
        fail_locked(b, "divergent __syncthreads: " + thread_name() + " is at " + where(loc) +
                           " while others wait at " + b.bar_file + ":" +
                           std::to_string(b.bar_line));
    }
    b.bar_count += pred != 0;
    b.progress = Clock::now();
    const uint64_t gen = b.gen;
    if (++b.arrived == b.live) {
        b.bar_result = b.bar_count;
        b.bar_total = b.arrived;
        b.arrived = 0;
        ++b.gen;
        b.cv.notify_all();
    } else {
        wait_or_watchdog(b, lk, b.cv, [&] { return b.gen != gen; }, "__syncthreads");
    }
    if (total) *total = b.bar_total;
    return b.bar_result;
}

// A CUDA thread returned: it leaves the block barrier (which may now be complete). A lane
// that returns while its warp still expects it in a warp operation is a kernel bug.
inline void thread_exit(ThreadCtx& t) {
    Block& b = *t.block;
    std::unique_lock<std::mutex> lk(b.mu);
    --b.live;
    b.progress = Clock::now();
    if (b.arrived > 0 && b.arrived == b.live) {
        b.bar_result = b.bar_count;
        b.bar_total = b.arrived;
        b.arrived = 0;
        ++b.gen;
        b.cv.notify_all();
    }
    Warp& w = *b.warps[t.warp];
    w.exited |= 1u << t.lane;
    if (w.arrived && (w.op_mask & (1u << t.lane)) && !b.failed) {
        b.failed = true;
        b.error = "lane " + std::to_string(t.lane) + " of warp " + std::to_string(t.warp) +
                  " returned while its warp waits for it in a warp operation (line " +
                  std::to_string(w.op_line) + ")";
        b.cv.notify_all();
        for (auto& x : b.warps) x->cv.notify_all();
    }
}

// One warp-wide exchange. `complete(ins, outs, mask)` runs once, in the last lane to arrive,
// with every participating lane's operands; each lane then takes its own result.
enum WarpOp { kShfl = 1, kBallot, kSync, kMma, kLdmatrix };

template <class In, class Out, class Complete>
inline Out warp_exchange(int kind, unsigned mask, const In& mine, Complete complete,
                         const std::source_location& loc) {
    static_assert(sizeof(In) <= 64 && sizeof(Out) <= 64, "warp operand too large");
    static_assert(std::is_trivially_copyable_v<In> && std::is_trivially_copyable_v<Out>);
    ThreadCtx& t = ctx();
    Block& b = *t.block;
    Warp& w = *b.warps[t.warp];
    const unsigned me = 1u << t.lane;
    std::unique_lock<std::mutex> lk(b.mu);
    if (b.failed) throw KernelAbort{};
    if (!(mask & me))
        fail_locked(b, "warp operation at " + where(loc) + ": " + thread_name() +
                           " is not in its own member mask");
    mask &= w.exist;  // lanes past the end of the block do not exist
    if (mask & w.exited)
        fail_locked(b, "warp operation at " + where(loc) +
                           " names lanes that have already returned");
    if (w.arrived == 0) {
        w.op_kind = kind;
        w.op_mask = mask;
        w.op_line = int(loc.line());
    } else if (w.op_kind != kind || w.op_mask != mask) {
        fail_locked(b, "divergent warp operations: " + thread_name() + " at " + where(loc) +
                           " while its warp waits at line " + std::to_string(w.op_line));
    }
    std::memcpy(w.in[t.lane], &mine, sizeof(In));
    w.arrived |= me;
    b.progress = Clock::now();
    const uint64_t gen = w.gen;
    if (w.arrived == w.op_mask) {
        In ins[32];
        Out outs[32];
        std::memset(static_cast<void*>(ins), 0, sizeof ins);
        std::memset(static_cast<void*>(outs), 0, sizeof outs);
        for (int l = 0; l < 32; ++l)
            if (w.op_mask >> l & 1) std::memcpy(&ins[l], w.in[l], sizeof(In));
        complete(ins, outs, w.op_mask);
        for (int l = 0; l < 32; ++l)
            if (w.op_mask >> l & 1) std::memcpy(w.out[l], &outs[l], sizeof(Out));
        w.arrived = 0;
        ++w.gen;
        w.cv.notify_all();
    } else {
        wait_or_watchdog(b, lk, w.cv, [&] { return w.gen != gen; }, "a warp operation");
    }
    Out r;
    std::memcpy(&r, w.out[t.lane], sizeof(Out));
    return r;
}

inline unsigned lane_id() { return ctx().lane; }

// ---- shuffles --------------------------------------------------------------------------------
struct ShflIn {
    uint64_t bits;
    int src;  // absolute source lane, computed by the caller
};

template <class T>
inline T shfl_from(unsigned mask, T var, int src, const std::source_location& loc) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
    ShflIn in{0, src};
    std::memcpy(&in.bits, &var, sizeof(T));
    uint64_t got = warp_exchange<ShflIn, uint64_t>(
        kShfl, mask, in,
        [](const ShflIn* ins, uint64_t* outs, unsigned) {
            for (int l = 0; l < 32; ++l) outs[l] = ins[ins[l].src & 31].bits;
        },
        loc);
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

// Source lane of the shuffles: within segments of `width` lanes, out-of-segment sources read
// the caller's own value (CUDA's definition).
inline int shfl_src_idx(int lane, int src, int width) {
    return (lane & ~(width - 1)) + (src & (width - 1));
}
inline int shfl_src_xor(int lane, int m, int width) {
    int s = lane ^ m;
    return (s & ~(width - 1)) == (lane & ~(width - 1)) ? s : lane;
}
inline int shfl_src_down(int lane, int d, int width) {
    return (lane & (width - 1)) + d < width ? lane + d : lane;
}
inline int shfl_src_up(int lane, int d, int width) {
    return (lane & (width - 1)) >= d ? lane - d : lane;
}

// ---- tensor-core fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8 / m16n8k16") ----------
//   groupID g = lane >> 2, threadID_in_group t = lane % 4
//   m16n8k8 .tf32  A (16x8): a0 (g, t)   a1 (g+8, t)   a2 (g, t+4)   a3 (g+8, t+4)
//                  B (8x8):  b0 (k=t, n=g)             b1 (k=t+4, n=g)
//   m16n8k16 .bf16 A (16x16), two elements per register, lower column in the low half:
//                  r0 (g, 2t..2t+1)   r1 (g+8, 2t..2t+1)   r2 (g, 2t+8..2t+9)   r3 (g+8, 2t+8..)
//                  B (16x8): r0 (k=2t..2t+1, n=g)   r1 (k=2t+8..2t+9, n=g)
//   C/D (16x8 f32): c0 (g, 2t)   c1 (g, 2t+1)   c2 (g+8, 2t)   c3 (g+8, 2t+1)
// (Cross-checked with CUTLASS's cute MMA_Traits SM80_16x8x8_F32TF32TF32F32_TN and
// SM80_16x8x16_F32BF16BF16F32_TN layouts.)
struct MmaIn {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};
struct MmaOut {
    float d[4];
};

inline float tf32_value(uint32_t bits) {
    // The tensor core reads sign, exponent and the top 10 mantissa bits of a .tf32 operand.
    return std::bit_cast<float>(bits & 0xffffe000u);
}
inline float bf16_value(uint32_t half) { return std::bit_cast<float>(half << 16); }

inline void scatter_c(const MmaIn& in, int lane, double (&C)[16][8]) {
    const int g = lane >> 2, t = lane & 3;
    C[g][2 * t] = in.c[0];
    C[g][2 * t + 1] = in.c[1];
    C[g + 8][2 * t] = in.c[2];
    C[g + 8][2 * t + 1] = in.c[3];
}
inline MmaOut gather_d(const double (&D)[16][8], int lane) {
    const int g = lane >> 2, t = lane & 3;
    return {{float(D[g][2 * t]), float(D[g][2 * t + 1]), float(D[g + 8][2 * t]),
             float(D[g + 8][2 * t + 1])}};
}

template <int K>
inline void mma_compute(const double (&A)[16][K], const double (&B)[K][8], double (&C)[16][8]) {
    // Products of tf32/bf16 values are exact in double; the hardware's f32 accumulation
    // order differs, so results agree to f32 rounding, not bit for bit.
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            double s = C[m][n];
            for (int k = 0; k < K; ++k) s += A[m][k] * B[k][n];
            C[m][n] = s;
        }
}

inline void mma_tf32_complete(const MmaIn* ins, MmaOut* outs, unsigned) {
    double A[16][8], B[8][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const MmaIn& x = ins[l];
        A[g][t] = tf32_value(x.a[0]);
        A[g + 8][t] = tf32_value(x.a[1]);
        A[g][t + 4] = tf32_value(x.a[2]);
        A[g + 8][t + 4] = tf32_value(x.a[3]);
        B[t][g] = tf32_value(x.b[0]);
        B[t + 4][g] = tf32_value(x.b[1]);
        scatter_c(x, l, C);
    }
    mma_compute<8>(A, B, C);
    for (int l = 0; l < 32; ++l) outs[l] = gather_d(C, l);
}

inline void mma_bf16_complete(const MmaIn* ins, MmaOut* outs, unsigned) {
    double A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const MmaIn& x = ins[l];
        for (int h = 0; h < 2; ++h) {  // h: low / high half of each register
            A[g][2 * t + h] = bf16_value(x.a[0] >> (16 * h) & 0xffff);
            A[g + 8][2 * t + h] = bf16_value(x.a[1] >> (16 * h) & 0xffff);
            A[g][2 * t + 8 + h] = bf16_value(x.a[2] >> (16 * h) & 0xffff);
            A[g + 8][2 * t + 8 + h] = bf16_value(x.a[3] >> (16 * h) & 0xffff);
            B[2 * t + h][g] = bf16_value(x.b[0] >> (16 * h) & 0xffff);
            B[2 * t + 8 + h][g] = bf16_value(x.b[1] >> (16 * h) & 0xffff);
        }
        scatter_c(x, l, C);
    }
    mma_compute<16>(A, B, C);
    for (int l = 0; l < 32; ++l) outs[l] = gather_d(C, l);
}

inline void mma_warp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                     void (*complete)(const MmaIn*, MmaOut*, unsigned),
                     const std::source_location& loc) {
    if (ctx().block->warps[ctx().warp]->exist != 0xffffffffu)
        fail("mma.sync at " + where(loc) + " in a partial warp (block size not a multiple of 32)");
    MmaIn in;
    std::memcpy(in.a, a, sizeof in.a);
    std::memcpy(in.b, b, sizeof in.b);
    std::memcpy(in.c, d, sizeof in.c);
    MmaOut o = warp_exchange<MmaIn, MmaOut>(kMma, 0xffffffffu, in, complete, loc);
    std::memcpy(d, o.d, sizeof o.d);
}

// ---- ldmatrix (PTX ISA "ldmatrix"): 8x8 matrices of b16, one row address per lane: lanes
// 8i..8i+7 give the rows of matrix i. Without .trans lane l receives row l/4, columns
// 2(l%4) and 2(l%4)+1 of each matrix; with .trans it receives rows 2(l%4), 2(l%4)+1 of
// column l/4 (the transposed matrix's fragment). Lower column/row in the low half.
struct LdmIn {
    const unsigned char* row;
};
struct LdmOut {
    uint32_t r[4];
};

template <int NUM, bool TRANS>
inline void ldmatrix_complete(const LdmIn* ins, LdmOut* outs, unsigned) {
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < NUM; ++i) {
            uint16_t e[2];
            for (int h = 0; h < 2; ++h) {
                const int row = TRANS ? 2 * t + h : g;
                const int col = TRANS ? g : 2 * t + h;
                std::memcpy(&e[h], ins[8 * i + row].row + 2 * col, 2);
            }
            outs[l].r[i] = uint32_t(e[0]) | uint32_t(e[1]) << 16;
        }
    }
}

template <int NUM, bool TRANS>
inline void ldmatrix_warp(uint32_t* r, const void* row_ptr, const std::source_location& loc) {
    const unsigned lane = ctx().lane;
    if (lane < 8u * NUM && (reinterpret_cast<uintptr_t>(row_ptr) & 15) != 0)
        fail("ldmatrix at " + where(loc) + ": row address not 16-byte aligned");
    if (ctx().block->warps[ctx().warp]->exist != 0xffffffffu)
        fail("ldmatrix at " + where(loc) + " in a partial warp");
    LdmOut o = warp_exchange<LdmIn, LdmOut>(
        kLdmatrix, 0xffffffffu, LdmIn{static_cast<const unsigned char*>(row_ptr)},
        ldmatrix_complete<NUM, TRANS>, loc);
    for (int i = 0; i < NUM; ++i) r[i] = o.r[i];
}

// ---- cp.async ---------------------------------------------------------------------------------
inline void perform(const AsyncCopy& c) {
    unsigned char tmp[16] = {0};
    std::memcpy(tmp, c.src, c.src_bytes);
    std::memcpy(c.dst, tmp, c.bytes);
}

inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes,
                     const std::source_location& loc) {
    if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & (bytes - 1))
        fail("cp.async at " + where(loc) + ": address not aligned to the copy size " +
             std::to_string(bytes));
    if (src_bytes > bytes) fail("cp.async at " + where(loc) + ": src-size > cp-size");
    ctx().uncommitted.push_back({dst, src, bytes, src_bytes});
}

inline void cp_async_commit() {
    ThreadCtx& t = ctx();
    t.committed.push_back(std::move(t.uncommitted));
    t.uncommitted.clear();
}

inline void cp_async_wait(int n) {
    ThreadCtx& t = ctx();
    while (int(t.committed.size()) > n) {
        for (const AsyncCopy& c : t.committed.front()) perform(c);
        t.committed.pop_front();
    }
}

// ---- launch -----------------------------------------------------------------------------------
struct ThreadStart {
    Block* block;
    unsigned linear;
    uint3 tid, bid;
    dim3 bdim, gdim;
    const std::function<void()>* body;
};

inline void* thread_main(void* p) {
    const ThreadStart& s = *static_cast<const ThreadStart*>(p);
    ThreadCtx t;
    t.block = s.block;
    t.linear = s.linear;
    t.warp = s.linear / 32;
    t.lane = s.linear % 32;
    t_ctx = &t;
    threadIdx = s.tid;
    blockIdx = s.bid;
    blockDim = s.bdim;
    gridDim = s.gdim;
    std::string error;
    try {
        (*s.body)();
        // Copies still in flight when a thread returns complete anyway on the GPU.
        cp_async_wait(0);
        for (const AsyncCopy& c : t.uncommitted) perform(c);
    } catch (const KernelAbort&) {
    } catch (const std::exception& e) {
        error = std::string("exception in kernel: ") + e.what();
    } catch (...) {
        error = "unknown exception in kernel";
    }
    if (!error.empty()) {
        std::unique_lock<std::mutex> lk(s.block->mu);
        if (!s.block->failed) {
            s.block->failed = true;
            s.block->error = error;
        }
    }
    thread_exit(t);
    t_ctx = nullptr;
    return nullptr;
}

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxDynamicSmem = 227 * 1024;  // sm_90: 227 KiB per block (opt-in)

inline int set_error(char* err, unsigned err_len, const std::string& msg, int code) {
    if (err && err_len) std::snprintf(err, err_len, "%s", msg.c_str());
    return code;
}

// Runs every block of the grid; returns 0, or non-zero with a message in `err`.
inline int run_grid(const char* name, const std::function<void()>& body, const unsigned* grid,
                    const unsigned* block, unsigned dynamic_smem, char* err, unsigned err_len) {
    const dim3 g(grid[0], grid[1], grid[2]), bd(block[0], block[1], block[2]);
    const unsigned long long nthreads = 1ull * bd.x * bd.y * bd.z;
    const std::string kname(name);
    if (!g.x || !g.y || !g.z || !nthreads)
        return set_error(err, err_len, kname + ": empty grid or block", 1);
    if (nthreads > kMaxThreadsPerBlock || bd.z > 64)
        return set_error(err, err_len,
                         kname + ": block of " + std::to_string(nthreads) +
                             " threads (the limit is 1024, z <= 64)",
                         1);
    if (g.y > 65535 || g.z > 65535)
        return set_error(err, err_len, kname + ": grid y/z above 65535", 1);
    if (dynamic_smem > kMaxDynamicSmem)
        return set_error(err, err_len,
                         kname + ": dynamic shared memory " + std::to_string(dynamic_smem) +
                             " bytes > 227 KiB",
                         1);
    // Dynamic shared memory: aligned like the GPU's shared window; poisoned with NaN bytes
    // before every block so reads of never-written shared memory show in the results.
    const size_t smem_alloc = (size_t(dynamic_smem) + 1023) / 1024 * 1024 + 1024;
    std::unique_ptr<unsigned char, decltype(&std::free)> smem(
        static_cast<unsigned char*>(std::aligned_alloc(1024, smem_alloc)), &std::free);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, stack_bytes());
    std::vector<pthread_t> threads(nthreads);
    std::vector<ThreadStart> starts(nthreads);
    int rc = 0;
    for (unsigned bz = 0; bz < g.z && rc == 0; ++bz)
        for (unsigned by = 0; by < g.y && rc == 0; ++by)
            for (unsigned bx = 0; bx < g.x && rc == 0; ++bx) {
                Block b;
                b.n_threads = b.live = unsigned(nthreads);
                const unsigned nwarps = unsigned((nthreads + 31) / 32);
                for (unsigned w = 0; w < nwarps; ++w) {
                    b.warps.push_back(std::make_unique<Warp>());
                    const unsigned lanes = unsigned(std::min<unsigned long long>(32, nthreads - 32ull * w));
                    b.warps.back()->exist = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
                }
                std::memset(smem.get(), 0xff, smem_alloc);
                b.dynamic_smem = smem.get();
                unsigned started = 0;
                for (unsigned i = 0; i < nthreads; ++i) {
                    const unsigned tx = i % bd.x, ty = i / bd.x % bd.y, tz = i / (bd.x * bd.y);
                    starts[i] = {&b, i, {tx, ty, tz}, {bx, by, bz}, bd, g, &body};
                    if (pthread_create(&threads[i], &attr, thread_main, &starts[i]) != 0) {
                        // Threads already started wait at a barrier for ones that never come:
                        // fail the block so they unwind.
                        std::unique_lock<std::mutex> lk(b.mu);
                        b.failed = true;
                        b.error = "pthread_create failed (too many threads?)";
                        b.live -= nthreads - i;
                        b.cv.notify_all();
                        for (auto& w : b.warps) w->cv.notify_all();
                        break;
                    }
                    ++started;
                }
                for (unsigned i = 0; i < started; ++i) pthread_join(threads[i], nullptr);
                if (b.failed) {
                    char pos[64];
                    std::snprintf(pos, sizeof pos, " (block %u,%u,%u)", bx, by, bz);
                    rc = set_error(err, err_len, kname + ": " + b.error + pos, 2);
                }
            }
    pthread_attr_destroy(&attr);
    return rc;
}

template <class T>
using Param = std::remove_cv_t<std::remove_reference_t<T>>;

template <class... Args, size_t... I>
inline std::tuple<Param<Args>...> unpack_params(void** params, std::index_sequence<I...>) {
    return std::tuple<Param<Args>...>(*static_cast<Param<Args>*>(params[I])...);
}

// The export ABI of kernels/README.md: params[i] points at the i-th argument (cuLaunchKernel's
// layout); the kernel's own parameter types say how to read them.
template <class... Args>
inline int launch(void (*kernel)(Args...), const char* name, void** params, const unsigned* grid,
                  const unsigned* block, unsigned dynamic_smem, char* err,
                  unsigned err_len) noexcept {
    try {
        std::lock_guard<std::mutex> serial(launch_mutex());
        if (sizeof...(Args) > 0 && !params)
            return set_error(err, err_len, std::string(name) + ": params is null", 1);
        const auto args = unpack_params<Args...>(params, std::index_sequence_for<Args...>{});
        const std::function<void()> body = [&] { std::apply(kernel, args); };
        return run_grid(name, body, grid, block, dynamic_smem, err, err_len);
    } catch (const std::exception& e) {
        return set_error(err, err_len, std::string(name) + ": " + e.what(), 3);
    }
}

inline unsigned char* dynamic_smem() { return ctx().block->dynamic_smem; }

}  // namespace keel_emu

#define KEEL_EMU_EXPORT(name)                                                                  \
    extern "C" __attribute__((visibility("default"))) int keel_emu_launch_##name(              \
        void** params, const unsigned* grid, const unsigned* block,                            \
        unsigned dynamic_smem_bytes, char* err, unsigned err_len) {                            \
        return ::keel_emu::launch(&name, #name, params, grid, block, dynamic_smem_bytes, err,  \
                                  err_len);                                                    \
    }

// `extern __shared__` has no CPU spelling: the block's dynamic shared memory, 1024-aligned.
#define KEEL_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::keel_emu::dynamic_smem())

// ---------------------------------------------------------------------------------------------
// Synchronisation and warp built-ins.
// ---------------------------------------------------------------------------------------------
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    keel_emu::block_barrier(0, loc);
}
inline int __syncthreads_count(int pred, std::source_location loc = std::source_location::current()) {
    return keel_emu::block_barrier(pred, loc);
}
inline int __syncthreads_or(int pred, std::source_location loc = std::source_location::current()) {
    return keel_emu::block_barrier(pred, loc) != 0;
}
inline int __syncthreads_and(int pred, std::source_location loc = std::source_location::current()) {
    unsigned total = 0;
    const int n = keel_emu::block_barrier(pred, loc, &total);
    return n == int(total);
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location loc = std::source_location::current()) {
    keel_emu::warp_exchange<int, int>(
        keel_emu::kSync, mask, 0, [](const int*, int*, unsigned) {}, loc);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

[[noreturn]] inline void __trap() { keel_emu::fail(keel_emu::thread_name() + " called __trap()"); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = 32,
                     std::source_location loc = std::source_location::current()) {
    const int lane = int(keel_emu::lane_id());
    return keel_emu::shfl_from(mask, var, keel_emu::shfl_src_idx(lane, src, width), loc);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                         std::source_location loc = std::source_location::current()) {
    const int lane = int(keel_emu::lane_id());
    return keel_emu::shfl_from(mask, var, keel_emu::shfl_src_xor(lane, lane_mask, width), loc);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          std::source_location loc = std::source_location::current()) {
    const int lane = int(keel_emu::lane_id());
    return keel_emu::shfl_from(mask, var, keel_emu::shfl_src_down(lane, int(delta), width), loc);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        std::source_location loc = std::source_location::current()) {
    const int lane = int(keel_emu::lane_id());
    return keel_emu::shfl_from(mask, var, keel_emu::shfl_src_up(lane, int(delta), width), loc);
}
inline unsigned __ballot_sync(unsigned mask, int pred,
                              std::source_location loc = std::source_location::current()) {
    return keel_emu::warp_exchange<int, unsigned>(
        keel_emu::kBallot, mask, pred != 0,
        [](const int* ins, unsigned* outs, unsigned m) {
            unsigned bits = 0;
            for (int l = 0; l < 32; ++l)
                if ((m >> l & 1) && ins[l]) bits |= 1u << l;
            for (int l = 0; l < 32; ++l) outs[l] = bits;
        },
        loc);
}
inline int __any_sync(unsigned mask, int pred,
                      std::source_location loc = std::source_location::current()) {
    return __ballot_sync(mask, pred, loc) != 0;
}
inline int __all_sync(unsigned mask, int pred,
                      std::source_location loc = std::source_location::current()) {
    return __ballot_sync(mask, pred, loc) == (mask & keel_emu::ctx().block->warps[keel_emu::ctx().warp]->exist);
}

// ---------------------------------------------------------------------------------------------
// Atomics (std::atomic_ref: real atomics, and ThreadSanitizer understands them).
// ---------------------------------------------------------------------------------------------
template <class T>
inline T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
inline T atomicSub(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <class T>
inline T atomicExch(T* p, T v) {
    return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
    std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
    return expected;
}
template <class T>
inline T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {}
    return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {}
    return old;
}

// ---------------------------------------------------------------------------------------------
// Math and bit built-ins. glibc declares __expf & co itself, so the fast intrinsics are
// function-like macros onto our own names (defined after every system header is included).
// ---------------------------------------------------------------------------------------------
namespace keel_emu {
inline float fast_expf(float x) { return std::exp(x); }
inline float fast_logf(float x) { return std::log(x); }
inline float fast_sinf(float x) { return std::sin(x); }
inline float fast_cosf(float x) { return std::cos(x); }
inline float fast_powf(float x, float y) { return std::pow(x, y); }
}  // namespace keel_emu
#define __expf(x) ::keel_emu::fast_expf(x)
#define __logf(x) ::keel_emu::fast_logf(x)
#define __sinf(x) ::keel_emu::fast_sinf(x)
#define __cosf(x) ::keel_emu::fast_cosf(x)
#define __powf(x, y) ::keel_emu::fast_powf(x, y)
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x != x ? 0.f : std::min(std::max(x, 0.f), 1.f); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
template <class T>
inline T __ldg(const T* p) { return *p; }

// CUDA's integer/float min and max overloads (the mixed int/unsigned ones go unsigned).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(unsigned(a), b); }
inline unsigned max(int a, unsigned b) { return max(unsigned(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, unsigned(b)); }
inline unsigned max(unsigned a, int b) { return max(a, unsigned(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
inline unsigned __brev(unsigned x) {
    x = (x >> 1 & 0x55555555u) | (x & 0x55555555u) << 1;
    x = (x >> 2 & 0x33333333u) | (x & 0x33333333u) << 2;
    x = (x >> 4 & 0x0f0f0f0fu) | (x & 0x0f0f0f0fu) << 4;
    return __builtin_bswap32(x);
}

// ---------------------------------------------------------------------------------------------
// CPU versions of prelude.cuh's inline-PTX wrappers (same names and signatures).
// The sm_90a wrappers (mbarrier, TMA, wgmma) have none: gemm_sm90a.cu is compile-checked only.
// ---------------------------------------------------------------------------------------------

// cvt.rna.tf32.f32: round to nearest, ties away from zero, keep 10 mantissa bits.
inline unsigned keel_f32_to_tf32(float x) {
    unsigned u = std::bit_cast<unsigned>(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf and NaN pass through
    return (u + 0x1000u) & 0xffffe000u;              // magnitude rounding: ties go away from 0
}

inline void keel_mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                  std::source_location loc = std::source_location::current()) {
    keel_emu::mma_warp(d, a, b, keel_emu::mma_tf32_complete, loc);
}

inline void keel_mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                   std::source_location loc = std::source_location::current()) {
    keel_emu::mma_warp(d, a, b, keel_emu::mma_bf16_complete, loc);
}

inline void keel_ldmatrix_x4(unsigned (&r)[4], const void* row,
                             std::source_location loc = std::source_location::current()) {
    keel_emu::ldmatrix_warp<4, false>(r, row, loc);
}
inline void keel_ldmatrix_x4_trans(unsigned (&r)[4], const void* row,
                                   std::source_location loc = std::source_location::current()) {
    keel_emu::ldmatrix_warp<4, true>(r, row, loc);
}
inline void keel_ldmatrix_x2(unsigned (&r)[2], const void* row,
                             std::source_location loc = std::source_location::current()) {
    keel_emu::ldmatrix_warp<2, false>(r, row, loc);
}
inline void keel_ldmatrix_x2_trans(unsigned (&r)[2], const void* row,
                                   std::source_location loc = std::source_location::current()) {
    keel_emu::ldmatrix_warp<2, true>(r, row, loc);
}

inline void keel_cp_async_16(void* smem, const void* gmem, unsigned src_bytes = 16,
                             std::source_location loc = std::source_location::current()) {
    keel_emu::cp_async(smem, gmem, 16, src_bytes, loc);
}
inline void keel_cp_async_16_ca(void* smem, const void* gmem, unsigned src_bytes = 16,
                                std::source_location loc = std::source_location::current()) {
    keel_emu::cp_async(smem, gmem, 16, src_bytes, loc);
}
inline void keel_cp_async_8(void* smem, const void* gmem, unsigned src_bytes = 8,
                            std::source_location loc = std::source_location::current()) {
    keel_emu::cp_async(smem, gmem, 8, src_bytes, loc);
}
inline void keel_cp_async_4(void* smem, const void* gmem, unsigned src_bytes = 4,
                            std::source_location loc = std::source_location::current()) {
    keel_emu::cp_async(smem, gmem, 4, src_bytes, loc);
}
inline void keel_cp_async_commit() { keel_emu::cp_async_commit(); }
template <int N>
inline void keel_cp_async_wait() {
    keel_emu::cp_async_wait(N);
}
