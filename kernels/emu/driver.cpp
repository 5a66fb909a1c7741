// driver.cpp — standalone test driver for the CPU build of kernels/gemm.cu.
//
// Runs a rung of the GEMM ladder through its exported launcher (keel_emu_launch_<kernel>, the
// same entry point keel's Rust side dlopens) on random data, with the output poisoned with NaN
// beforehand, and compares with a double-precision host GEMM. Build (from the repo root):
//
//   g++ -std=c++20 -O2 -pthread -I kernels kernels/emu/driver.cpp -o /tmp/gemm_emu
//   g++ -std=c++20 -O1 -g -pthread -fsanitize=thread -I kernels kernels/emu/driver.cpp -o /tmp/gemm_tsan
//   ... -DKEEL_GEMM_CU='"/tmp/mutated_gemm.cu"'   to test a modified copy of gemm.cu
//
// Usage:
//   gemm_emu RUNG M N K [--bias] [--relu] [--offset E] [--seed S] [--tol T]
//                       [--grid X Y Z] [--block X Y Z] [--smem BYTES]
//   gemm_emu --all [RUNG...]   every (or the named) rungs on the standard odd/ragged/aligned sizes
//   gemm_emu --selftest        checks of the emulator itself (barriers, warps, mma, watchdog)
// RUNG is a name of kernels/gemm_rungs.json (geometry from there unless overridden).
// --offset E shifts A, B, C and bias by E elements off their allocation's alignment, to drive
// the scalar fallbacks of the vectorised rungs. Exit status: 0 PASS, 1 FAIL, 2 launch error.
//
// Error measure (the same as keel's Rust tests): max |C - ref| / (sqrt(K) * max|A| * max|B|),
// against the fp64 GEMM of the inputs the kernel actually multiplies: bf16 inputs are rounded
// on the host before both; the TF32 rung rounds inside the kernel (cvt.rna), so its reference
// uses inputs rounded the same way. Tolerances: fp32 1e-5, tf32 5e-4, bf16 1e-2. max|ref| and
// the error relative to it are printed too.

#define KEEL_EMU 1
#include "emu/cuda_emu.h"
#include "prelude.cuh"

#ifndef KEEL_GEMM_CU
#define KEEL_GEMM_CU "gemm.cu"
#endif
#include KEEL_GEMM_CU

KEEL_EMU_EXPORT(gemm_naive)
KEEL_EMU_EXPORT(gemm_coalesced)
KEEL_EMU_EXPORT(gemm_smem)
KEEL_EMU_EXPORT(gemm_blocktile_1d)
KEEL_EMU_EXPORT(gemm_blocktile_2d)
KEEL_EMU_EXPORT(gemm_vectorized)
KEEL_EMU_EXPORT(gemm_warptile)
KEEL_EMU_EXPORT(gemm_async)
KEEL_EMU_EXPORT(gemm_tf32)
KEEL_EMU_EXPORT(gemm_bf16_mma)

#include <chrono>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

namespace {

using LaunchFn = int (*)(void**, const unsigned*, const unsigned*, unsigned, char*, unsigned);

const std::map<std::string, LaunchFn>& launchers() {
    static const std::map<std::string, LaunchFn> m = {
        {"gemm_naive", keel_emu_launch_gemm_naive},
        {"gemm_coalesced", keel_emu_launch_gemm_coalesced},
        {"gemm_smem", keel_emu_launch_gemm_smem},
        {"gemm_blocktile_1d", keel_emu_launch_gemm_blocktile_1d},
        {"gemm_blocktile_2d", keel_emu_launch_gemm_blocktile_2d},
        {"gemm_vectorized", keel_emu_launch_gemm_vectorized},
        {"gemm_warptile", keel_emu_launch_gemm_warptile},
        {"gemm_async", keel_emu_launch_gemm_async},
        {"gemm_tf32", keel_emu_launch_gemm_tf32},
        {"gemm_bf16_mma", keel_emu_launch_gemm_bf16_mma},
    };
    return m;
}

// ----- gemm_rungs.json (a flat array of flat objects: strings, integers, integer arrays) -------
struct Rung {
    std::string rung, kernel, precision, arch;
    unsigned block[3] = {1, 1, 1};
    unsigned bm = 0, bn = 0, dynamic_smem = 0;
};

// KEEL_GEMM_RUNGS if set, else next to this source file (an absolute path when compiled with
// one), else kernels/gemm_rungs.json under the current directory (the repository root).
std::string rungs_path() {
    if (const char* e = std::getenv("KEEL_GEMM_RUNGS")) return e;
    std::string here = __FILE__;  // .../kernels/emu/driver.cpp
    std::string p = here.substr(0, here.rfind('/')) + "/../gemm_rungs.json";
    if (std::ifstream(p)) return p;
    return "kernels/gemm_rungs.json";
}

std::vector<Rung> load_rungs() {
    std::ifstream f(rungs_path());
    if (!f) throw std::runtime_error("cannot read " + rungs_path());
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string s = ss.str();
    size_t i = 0;
    auto ws = [&] { while (i < s.size() && std::isspace((unsigned char)s[i])) ++i; };
    auto expect = [&](char c) {
        ws();
        if (i >= s.size() || s[i] != c)
            throw std::runtime_error(std::string("gemm_rungs.json: expected '") + c + "' at " +
                                     std::to_string(i));
        ++i;
    };
    auto str = [&] {
        expect('"');
        size_t j = s.find('"', i);
        std::string r = s.substr(i, j - i);
        i = j + 1;
        return r;
    };
    auto num = [&] {
        ws();
        size_t j = i;
        while (j < s.size() && std::isdigit((unsigned char)s[j])) ++j;
        unsigned v = unsigned(std::stoul(s.substr(i, j - i)));
        i = j;
        return v;
    };
    std::vector<Rung> out;
    expect('[');
    for (;;) {
        ws();
        if (s[i] == ']') break;
        expect('{');
        Rung r;
        for (;;) {
            const std::string key = str();
            expect(':');
            ws();
            if (key == "block") {
                expect('[');
                for (int d = 0; d < 3; ++d) {
                    r.block[d] = num();
                    if (d < 2) expect(',');
                }
                expect(']');
            } else if (s[i] == '"') {
                const std::string v = str();
                if (key == "rung") r.rung = v;
                else if (key == "kernel") r.kernel = v;
                else if (key == "precision") r.precision = v;
                else if (key == "arch") r.arch = v;
            } else {
                const unsigned v = num();
                if (key == "bm") r.bm = v;
                else if (key == "bn") r.bn = v;
                else if (key == "dynamic_smem") r.dynamic_smem = v;
            }
            ws();
            if (s[i] == ',') { ++i; continue; }
            expect('}');
            break;
        }
        out.push_back(r);
        ws();
        if (s[i] == ',') ++i;
    }
    return out;
}

const Rung* find_rung(const std::vector<Rung>& rungs, const std::string& name) {
    for (const Rung& r : rungs)
        if (r.rung == name || r.kernel == name) return &r;
    return nullptr;
}

// ----- host-side numerics --------------------------------------------------------------------
uint16_t f32_to_bf16(float x) {  // round to nearest even, as PyTorch / keel's host code
    uint32_t u = std::bit_cast<uint32_t>(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1);
    return uint16_t(u >> 16);
}
float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }
float tf32_rna(float x) { return std::bit_cast<float>(keel_f32_to_tf32(x)); }

struct Options {
    bool bias = false, relu = false;
    unsigned offset = 0, seed = 1;
    double tol = -1;
    bool grid_set = false, block_set = false, smem_set = false;
    unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1}, smem = 0;
    bool quiet = false;
};

// 64-byte aligned storage shifted by `offset` elements, ending exactly where its allocation
// ends, so AddressSanitizer sees any read or write past the last element.
template <class T>
struct Buffer {
    void* raw = nullptr;
    T* p = nullptr;
    Buffer(size_t n, unsigned offset) {
        if (posix_memalign(&raw, 64, std::max<size_t>((n + offset) * sizeof(T), 1)) != 0)
            throw std::bad_alloc();
        p = static_cast<T*>(raw) + offset;
    }
    ~Buffer() { std::free(raw); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
};

int run_one(const Rung& rung, int M, int N, int K, const Options& o) {
    auto it = launchers().find(rung.kernel);
    if (it == launchers().end()) {
        std::printf("rung %s: kernel %s is not in the CPU build (%s)\n", rung.rung.c_str(),
                    rung.kernel.c_str(), rung.arch.c_str());
        return 2;
    }
    const bool bf16 = rung.precision == "bf16", tf32 = rung.precision == "tf32";
    std::mt19937 rng(o.seed * 7919u + unsigned(M) * 31u + unsigned(N) * 17u + unsigned(K));
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<float> a(size_t(M) * K), b(size_t(K) * N), bias(N);
    for (float& x : a) x = U(rng);
    for (float& x : b) x = U(rng);
    for (float& x : bias) x = U(rng);

    // What the kernel multiplies, exactly: bf16 is rounded on the host (the kernel's input);
    // TF32 rounds inside the kernel with cvt.rna, so the reference rounds the same way.
    std::vector<float> ra = a, rb = b;
    Buffer<float> dA(bf16 ? 0 : a.size(), o.offset), dB(bf16 ? 0 : b.size(), o.offset);
    Buffer<uint16_t> hA(bf16 ? a.size() : 0, o.offset), hB(bf16 ? b.size() : 0, o.offset);
    if (bf16) {
        for (size_t i = 0; i < a.size(); ++i) ra[i] = bf16_to_f32(hA.p[i] = f32_to_bf16(a[i]));
        for (size_t i = 0; i < b.size(); ++i) rb[i] = bf16_to_f32(hB.p[i] = f32_to_bf16(b[i]));
    } else {
        std::copy(a.begin(), a.end(), dA.p);
        std::copy(b.begin(), b.end(), dB.p);
        if (tf32) {
            for (float& x : ra) x = tf32_rna(x);
            for (float& x : rb) x = tf32_rna(x);
        }
    }
    Buffer<float> dC(size_t(M) * N, o.offset), dBias(N, o.offset);
    std::fill(dC.p, dC.p + size_t(M) * N, std::numeric_limits<float>::quiet_NaN());
    std::copy(bias.begin(), bias.end(), dBias.p);

    // fp64 reference with the same epilogue.
    std::vector<double> ref(size_t(M) * N);
    double max_a = 0, max_b = 0, max_ref = 0;
    for (float x : ra) max_a = std::max(max_a, double(std::fabs(x)));
    for (float x : rb) max_b = std::max(max_b, double(std::fabs(x)));
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += double(ra[size_t(m) * K + k]) * rb[size_t(k) * N + n];
            if (o.bias) s += bias[n];
            if (o.relu) s = s > 0 || s != s ? s : 0;
            ref[size_t(m) * N + n] = s;
            max_ref = std::max(max_ref, std::fabs(s));
        }

    const void* pA = bf16 ? static_cast<const void*>(hA.p) : static_cast<const void*>(dA.p);
    const void* pB = bf16 ? static_cast<const void*>(hB.p) : static_cast<const void*>(dB.p);
    float* pC = dC.p;
    const float* pBias = o.bias ? dBias.p : nullptr;
    int relu = o.relu ? 1 : 0;
    void* params[] = {&pA, &pB, &pC, &pBias, &M, &N, &K, &relu};
    unsigned grid[3] = {(unsigned(N) + rung.bn - 1) / rung.bn, (unsigned(M) + rung.bm - 1) / rung.bm, 1};
    unsigned block[3] = {rung.block[0], rung.block[1], rung.block[2]};
    unsigned smem = rung.dynamic_smem;
    if (o.grid_set) std::copy(o.grid, o.grid + 3, grid);
    if (o.block_set) std::copy(o.block, o.block + 3, block);
    if (o.smem_set) smem = o.smem;

    char err[512] = {0};
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = it->second(params, grid, block, smem, err, sizeof err);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-13s %4dx%-4dx%-4d bias=%d relu=%d offset=%u grid=(%u,%u,%u) block=(%u,%u,%u) smem=%u: ",
                rung.rung.c_str(), M, N, K, o.bias, o.relu, o.offset, grid[0], grid[1], grid[2],
                block[0], block[1], block[2], smem);
    if (rc != 0) {
        std::printf("LAUNCH ERROR %d: %s\n", rc, err);
        return 2;
    }
    double max_err = 0;
    size_t bad_i = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double d = std::fabs(double(pC[i]) - ref[i]);
        const double e = d == d ? d : std::numeric_limits<double>::infinity();  // NaN: never written
        if (e > max_err) { max_err = e; bad_i = i; }
    }
    const double scale = std::sqrt(double(K)) * std::max(max_a, 1e-30) * std::max(max_b, 1e-30);
    const double rel = max_err / scale;
    // TF32 only, for information: the error against the unrounded fp32 inputs (what a
    // caller comparing with an fp32 GEMM sees), on the same scale.
    double rel_fp32_inputs = -1;
    if (tf32) {
        double e = 0, ma = 0, mb = 0;
        for (float x : a) ma = std::max(ma, double(std::fabs(x)));
        for (float x : b) mb = std::max(mb, double(std::fabs(x)));
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
                double s = 0;
                for (int k = 0; k < K; ++k) s += double(a[size_t(m) * K + k]) * b[size_t(k) * N + n];
                if (o.bias) s += bias[n];
                if (o.relu) s = s > 0 || s != s ? s : 0;
                const double d = std::fabs(double(pC[size_t(m) * N + n]) - s);
                e = std::max(e, d == d ? d : std::numeric_limits<double>::infinity());
            }
        rel_fp32_inputs = e / (std::sqrt(double(K)) * ma * mb);
    }
    const double tol = o.tol > 0 ? o.tol : bf16 ? 1e-2 : tf32 ? 5e-4 : 1e-5;
    const bool pass = rel <= tol;
    std::printf("max_abs_err=%.3g max|ref|=%.3g err/max|ref|=%.3g err/(sqrt(K)max|A|max|B|)=%.3g "
                "tol=%.0e %s (%.2f s)\n",
                max_err, max_ref, max_ref > 0 ? max_err / max_ref : max_err, rel, tol,
                pass ? "PASS" : "FAIL", secs);
    if (tf32)
        std::printf("    (tf32: vs the unrounded fp32 inputs the same measure is %.3g)\n",
                    rel_fp32_inputs);
    if (!pass)
        std::printf("    worst element C[%zu][%zu] = %.9g, reference %.9g\n", bad_i / N, bad_i % N,
                    double(pC[bad_i]), ref[bad_i]);
    return pass ? 0 : 1;
}

// ----- checks of the emulator itself ---------------------------------------------------------
__global__ void selftest_warp(int* out) {
    const int lane = threadIdx.x % 32;
    int v = lane + 1;
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = lane;
    for (int o = 16; o > 0; o /= 2) w += __shfl_down_sync(0xffffffffu, w, o);
    const unsigned odd = __ballot_sync(0xffffffffu, lane & 1);
    const int bcast = __shfl_sync(0xffffffffu, lane * 10, 7);
    const int up = __shfl_up_sync(0xffffffffu, lane, 3);
    if (lane == 0) {
        out[0] = v;        // 528 = 1 + ... + 32 (every lane has it)
        out[1] = w;        // 496 = 0 + ... + 31 (lane 0)
        out[2] = int(odd); // 0xaaaaaaaa
    }
    if (lane == 5) out[3] = bcast;  // 70
    if (lane == 5) out[4] = up;     // 2
    if (lane == 1) out[5] = up;     // 1 (lane < delta keeps its own)
}

__global__ void selftest_early_exit(int* out) {
    __shared__ int s[64];
    if (threadIdx.x >= 40) return;  // these leave; the barriers below complete without them
    s[threadIdx.x] = int(threadIdx.x);
    __syncthreads();
    const int v = s[(threadIdx.x + 1) % 40];
    __syncthreads();
    atomicAdd(out, v);
}

__global__ void selftest_divergent(int*) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
}

__global__ void selftest_deadlock(int* out) {
    // Lane 0 waits at the block barrier, lane 1 for lane 0 in a shuffle: nobody can proceed.
    if (threadIdx.x == 0) __syncthreads();
    if (threadIdx.x == 1) out[0] = __shfl_sync(0x3u, 1, 0);
}

__global__ void selftest_trap(int*) {
    if (threadIdx.x == 3) __trap();
}

// One warp multiplies a 16x8 (tf32) or 16x16 (bf16) tile by a tile of B, fragments read
// straight from global memory with the PTX layouts, and writes D with the C layout.
__global__ void selftest_mma(const float* A, const float* B, const unsigned short* Ah,
                             const unsigned short* Bh, float* D_tf32, float* D_bf16) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned a[4] = {keel_f32_to_tf32(A[g * 8 + t]), keel_f32_to_tf32(A[(g + 8) * 8 + t]),
                     keel_f32_to_tf32(A[g * 8 + t + 4]), keel_f32_to_tf32(A[(g + 8) * 8 + t + 4])};
    unsigned b[2] = {keel_f32_to_tf32(B[t * 8 + g]), keel_f32_to_tf32(B[(t + 4) * 8 + g])};
    float d[4] = {0, 0, 0, 0};
    keel_mma_m16n8k8_tf32(d, a, b);
    D_tf32[g * 8 + 2 * t] = d[0];
    D_tf32[g * 8 + 2 * t + 1] = d[1];
    D_tf32[(g + 8) * 8 + 2 * t] = d[2];
    D_tf32[(g + 8) * 8 + 2 * t + 1] = d[3];
    auto pk = [](unsigned short lo, unsigned short hi) { return unsigned(lo) | unsigned(hi) << 16; };
    unsigned ah[4] = {pk(Ah[g * 16 + 2 * t], Ah[g * 16 + 2 * t + 1]),
                      pk(Ah[(g + 8) * 16 + 2 * t], Ah[(g + 8) * 16 + 2 * t + 1]),
                      pk(Ah[g * 16 + 2 * t + 8], Ah[g * 16 + 2 * t + 9]),
                      pk(Ah[(g + 8) * 16 + 2 * t + 8], Ah[(g + 8) * 16 + 2 * t + 9])};
    unsigned bh[2] = {pk(Bh[(2 * t) * 8 + g], Bh[(2 * t + 1) * 8 + g]),
                      pk(Bh[(2 * t + 8) * 8 + g], Bh[(2 * t + 9) * 8 + g])};
    float e[4] = {0, 0, 0, 0};
    keel_mma_m16n8k16_bf16(e, ah, bh);
    D_bf16[g * 8 + 2 * t] = e[0];
    D_bf16[g * 8 + 2 * t + 1] = e[1];
    D_bf16[(g + 8) * 8 + 2 * t] = e[2];
    D_bf16[(g + 8) * 8 + 2 * t + 1] = e[3];
}

// ldmatrix (.x4 and .x4.trans) of a 16x16 b16 tile in shared memory against direct reads.
__global__ void selftest_ldmatrix(int* bad) {
    __shared__ unsigned short tile[16][24];  // 48-byte rows: 16-byte aligned, padded
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    for (int i = lane; i < 16 * 16; i += 32) tile[i / 16][i % 16] = (unsigned short)(i * 3 + 1);
    __syncwarp();
    unsigned r[4], q[4];
    keel_ldmatrix_x4(r, &tile[lane % 16][(lane / 16) * 8]);
    keel_ldmatrix_x4_trans(q, &tile[lane % 16][(lane / 16) * 8]);
    int errors = 0;
    for (int i = 0; i < 4; ++i) {  // matrix i: rows 8*(i%2).., columns 8*(i/2)..
        const int r0 = 8 * (i % 2), c0 = 8 * (i / 2);
        const unsigned want = tile[r0 + g][c0 + 2 * t] | unsigned(tile[r0 + g][c0 + 2 * t + 1]) << 16;
        const unsigned want_t = tile[r0 + 2 * t][c0 + g] | unsigned(tile[r0 + 2 * t + 1][c0 + g]) << 16;
        errors += (r[i] != want) + (q[i] != want_t);
    }
    atomicAdd(bad, errors);
}

int selftest() {
    int fails = 0;
    auto check = [&](const char* what, bool ok, const std::string& detail = "") {
        std::printf("selftest %-44s %s %s\n", what, ok ? "ok  " : "FAIL", detail.c_str());
        fails += !ok;
    };
    auto launch = [](auto kernel, const char* name, void** params, unsigned threads,
                     std::string* msg) {
        const unsigned grid[3] = {1, 1, 1}, block[3] = {threads, 1, 1};
        char err[512] = {0};
        const int rc = keel_emu::launch(kernel, name, params, grid, block, 0, err, sizeof err);
        if (msg) *msg = err;
        return rc;
    };
    {
        int out[6] = {0};
        int* p = out;
        void* params[] = {&p};
        std::string msg;
        const int rc = launch(selftest_warp, "selftest_warp", params, 64, &msg);
        check("shuffles and ballot", rc == 0 && out[0] == 528 && out[1] == 496 &&
                                         unsigned(out[2]) == 0xaaaaaaaau && out[3] == 70 &&
                                         out[4] == 2 && out[5] == 1, msg);
    }
    {
        int sum = 0;
        int* p = &sum;
        void* params[] = {&p};
        std::string msg;
        const int rc = launch(selftest_early_exit, "selftest_early_exit", params, 96, &msg);
        check("barrier after early returns; atomicAdd", rc == 0 && sum == 780,
              msg + " sum=" + std::to_string(sum));
    }
    {
        int* p = nullptr;
        void* params[] = {&p};
        std::string msg;
        const int rc = launch(selftest_divergent, "selftest_divergent", params, 64, &msg);
        check("divergent __syncthreads is an error", rc != 0 && msg.find("divergent") != std::string::npos, "-> " + msg);
    }
    {
        int x = 0;
        int* p = &x;
        void* params[] = {&p};
        std::string msg;
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = launch(selftest_deadlock, "selftest_deadlock", params, 32, &msg);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        char buf[64];
        std::snprintf(buf, sizeof buf, " (after %.1f s)", s);
        check("deadlock -> watchdog error", rc != 0 && msg.find("watchdog") != std::string::npos, "-> " + msg + buf);
    }
    {
        int* p = nullptr;
        void* params[] = {&p};
        std::string msg;
        const int rc = launch(selftest_trap, "selftest_trap", params, 32, &msg);
        check("__trap is an error", rc != 0 && msg.find("__trap") != std::string::npos, "-> " + msg);
    }
    {
        unsigned grid[3] = {1, 1, 1}, block[3] = {1025, 1, 1};
        char err[256] = {0};
        int* p = nullptr;
        void* params[] = {&p};
        const int rc = keel_emu::launch(selftest_trap, "selftest_trap", params, grid, block, 0, err, sizeof err);
        check("block > 1024 threads is an error", rc != 0, std::string("-> ") + err);
        block[0] = 32;
        const int rc2 = keel_emu::launch(selftest_trap, "selftest_trap", params, grid, block, 240000, err, sizeof err);
        check("dynamic smem > 227 KiB is an error", rc2 != 0, std::string("-> ") + err);
    }
    {
        int bad = 0;
        int* p = &bad;
        void* params[] = {&p};
        std::string msg;
        const int rc = launch(selftest_ldmatrix, "selftest_ldmatrix", params, 32, &msg);
        check("ldmatrix x4 / x4.trans fragments", rc == 0 && bad == 0, msg + " mismatches=" + std::to_string(bad));
    }
    {
        std::mt19937 rng(3);
        std::uniform_real_distribution<float> U(-1, 1);
        std::vector<float> A(16 * 8), B(8 * 8), D(16 * 8), E(16 * 8);
        std::vector<unsigned short> Ah(16 * 16), Bh(16 * 8);
        for (float& x : A) x = U(rng);
        for (float& x : B) x = U(rng);
        for (auto& x : Ah) x = f32_to_bf16(U(rng));
        for (auto& x : Bh) x = f32_to_bf16(U(rng));
        const float *pa = A.data(), *pb = B.data();
        const unsigned short *pah = Ah.data(), *pbh = Bh.data();
        float *pd = D.data(), *pe = E.data();
        void* params[] = {&pa, &pb, &pah, &pbh, &pd, &pe};
        std::string msg;
        const int rc = launch(selftest_mma, "selftest_mma", params, 32, &msg);
        double et = 0, eb = 0;
        for (int m = 0; m < 16; ++m)
            for (int n = 0; n < 8; ++n) {
                double s = 0, h = 0;
                for (int k = 0; k < 8; ++k) s += double(tf32_rna(A[m * 8 + k])) * tf32_rna(B[k * 8 + n]);
                for (int k = 0; k < 16; ++k) h += double(bf16_to_f32(Ah[m * 16 + k])) * bf16_to_f32(Bh[k * 8 + n]);
                et = std::max(et, std::fabs(s - D[m * 8 + n]));
                eb = std::max(eb, std::fabs(h - E[m * 8 + n]));
            }
        check("mma m16n8k8 tf32 / m16n8k16 bf16 vs host", rc == 0 && et < 1e-5 && eb < 1e-5,
              msg + " err_tf32=" + std::to_string(et) + " err_bf16=" + std::to_string(eb));
    }
    {
        // cvt.rna: ties away from zero at the 13th bit, inf/NaN kept.
        const float tie = std::bit_cast<float>(0x3f801000u), ntie = std::bit_cast<float>(0xbf801000u);
        const bool ok = keel_f32_to_tf32(tie) == 0x3f802000u && keel_f32_to_tf32(ntie) == 0xbf802000u &&
                        keel_f32_to_tf32(std::bit_cast<float>(0x3f800fffu)) == 0x3f800000u &&
                        keel_f32_to_tf32(std::bit_cast<float>(0x7f7fffffu)) == 0x7f800000u &&
                        keel_f32_to_tf32(INFINITY) == 0x7f800000u;
        check("cvt.rna.tf32.f32 rounding", ok);
    }
    std::printf("selftest: %s\n", fails ? "FAILED" : "all ok");
    return fails ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr,
                     "usage: %s RUNG M N K [--bias] [--relu] [--offset E] [--seed S] [--tol T]\n"
                     "          [--grid X Y Z] [--block X Y Z] [--smem BYTES]\n"
                     "       %s --all [RUNG...]\n       %s --selftest\n",
                     argv[0], argv[0], argv[0]);
        return 2;
    }
    try {
        const std::string first = argv[1];
        if (first == "--selftest") {
            setenv("KEEL_EMU_WATCHDOG_S", "2", 0);  // the deadlock check should not take 20 s
            return selftest();
        }
        const std::vector<Rung> rungs = load_rungs();
        if (first == "--all") {
            std::vector<const Rung*> todo;
            for (int i = 2; i < argc; ++i) {
                const Rung* r = find_rung(rungs, argv[i]);
                if (!r) throw std::runtime_error(std::string("unknown rung ") + argv[i]);
                todo.push_back(r);
            }
            if (todo.empty())
                for (const Rung& r : rungs)
                    if (r.arch != "sm_90a") todo.push_back(&r);
            // The odd and ragged sizes, then sizes whose K and N are multiples of 8 (the vector
            // and 16-byte cp.async paths; the last one wraps the pipelines' stages), and an
            // offset run (the scalar fallbacks at aligned-looking sizes); epilogue on and off.
            struct Case { int m, n, k; bool bias, relu; unsigned offset; };
            const Case cases[] = {
                {1, 1, 1, false, false, 0},   {3, 5, 7, true, true, 0},
                {17, 63, 33, true, false, 0}, {63, 47, 130, false, true, 0},
                {130, 129, 65, true, true, 0}, {64, 64, 64, false, false, 0},
                {130, 136, 72, true, true, 0}, {130, 136, 72, true, true, 1},
                {72, 264, 200, true, false, 0},  // aligned K over more tiles than stages
            };
            int worst = 0, n = 0, bad = 0;
            for (const Rung* r : todo)
                for (const Case& c : cases) {
                    Options o;
                    o.bias = c.bias;
                    o.relu = c.relu;
                    o.offset = c.offset;
                    const int rc = run_one(*r, c.m, c.n, c.k, o);
                    worst = std::max(worst, rc);
                    ++n;
                    bad += rc != 0;
                }
            std::printf("%d runs, %d failed\n", n, bad);
            return worst;
        }
        if (argc < 5) throw std::runtime_error("need RUNG M N K");
        const Rung* r = find_rung(rungs, first);
        if (!r) throw std::runtime_error("unknown rung " + first);
        const int M = std::atoi(argv[2]), N = std::atoi(argv[3]), K = std::atoi(argv[4]);
        if (M < 1 || N < 1 || K < 1) throw std::runtime_error("M, N, K must be >= 1");
        Options o;
        for (int i = 5; i < argc; ++i) {
            const std::string a = argv[i];
            auto next = [&] {
                if (++i >= argc) throw std::runtime_error(a + " needs a value");
                return unsigned(std::stoul(argv[i]));
            };
            if (a == "--bias") o.bias = true;
            else if (a == "--relu") o.relu = true;
            else if (a == "--offset") o.offset = next();
            else if (a == "--seed") o.seed = next();
            else if (a == "--tol") { if (++i >= argc) throw std::runtime_error("--tol"); o.tol = std::atof(argv[i]); }
            else if (a == "--grid") { o.grid_set = true; for (unsigned& g : o.grid) g = next(); }
            else if (a == "--block") { o.block_set = true; for (unsigned& b : o.block) b = next(); }
            else if (a == "--smem") { o.smem_set = true; o.smem = next(); }
            else throw std::runtime_error("unknown option " + a);
        }
        return run_one(*r, M, N, K, o);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
}
