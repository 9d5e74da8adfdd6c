// Runs the CUDA kernels of ops/csrc/ms_deform_attn_kernels.cuh on the CPU (test helper, host compiler only).
//
// Every CUDA thread of a launch becomes a std::thread (one block at a time); threadIdx / blockIdx / blockDim /
// gridDim are thread-locals, __shfl_xor_sync exchanges through a per-warp slot array guarded by a
// std::barrier (so all 32 lanes must reach it, as on the GPU), and atomicAdd is std::atomic_ref::fetch_add.
// This executes the kernels' real index math, grid-stride loop, warp reduction and scatter on CPU-only CI.
// Built by tests/test_ops_cuda_emulation.py: g++ -std=c++20 -shared -fPIC -pthread -I<cuda>/include -I ops/csrc
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

struct EmuDim { unsigned x = 0, y = 1, z = 1; };
thread_local EmuDim threadIdx, blockIdx;
EmuDim blockDim, gridDim;

struct EmuWarp {
  std::barrier<> bar{32};
  double slots[32];
};
thread_local EmuWarp* emu_warp = nullptr;

template <typename T>
T __shfl_xor_sync(unsigned, T v, int offset) {
  const int lane = threadIdx.x & 31;
  emu_warp->slots[lane] = static_cast<double>(v);
  emu_warp->bar.arrive_and_wait();
  const T r = static_cast<T>(emu_warp->slots[lane ^ offset]);
  emu_warp->bar.arrive_and_wait();
  return r;
}

template <typename T>
T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}

#ifndef __global__
#define __global__
#endif
#include "ms_deform_attn_kernels.cuh"

namespace {

template <typename F>
void emu_launch(int64_t blocks, int threads, F&& body) {
  gridDim.x = static_cast<unsigned>(blocks);
  blockDim.x = static_cast<unsigned>(threads);
  for (int64_t b = 0; b < blocks; ++b) {
    std::vector<std::unique_ptr<EmuWarp>> warps;
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<EmuWarp>());
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, b, t] {
        blockIdx.x = static_cast<unsigned>(b);
        threadIdx.x = static_cast<unsigned>(t);
        emu_warp = warps[t / 32].get();
        body();
      });
    }
    for (auto& th : pool) th.join();
  }
}

// value dtype codes: 0 float, 1 double, 2 half, 3 bfloat16; loc_float: locations/weights are float32.
template <typename F>
int dispatch(int dtype, int loc_float, F&& fn) {
  auto go = [&](auto* v) {
    using T = std::remove_pointer_t<decltype(v)>;
    if (loc_float) fn(v, static_cast<float*>(nullptr));
    else fn(v, static_cast<T*>(nullptr));
  };
  switch (dtype) {
    case 0: go(static_cast<float*>(nullptr)); return 0;
    case 1: go(static_cast<double*>(nullptr)); return 0;
    case 2: go(static_cast<__half*>(nullptr)); return 0;
    case 3: go(static_cast<__nv_bfloat16*>(nullptr)); return 0;
  }
  return 1;
}

}  // namespace

extern "C" int msda_emu_forward(int dtype, int loc_float, const void* value, const int64_t* shapes,
                                const int64_t* starts, const void* loc, const void* attn, void* out, int64_t N,
                                int64_t S, int64_t M, int64_t D, int64_t Lq, int L, int P, int64_t blocks,
                                int threads) {
  return dispatch(dtype, loc_float, [&](auto* vt, auto* lt) {
    using T = std::remove_pointer_t<decltype(vt)>;
    using LT = std::remove_pointer_t<decltype(lt)>;
    emu_launch(blocks, threads, [&] {
      msda::msda_forward_kernel<T, LT>(static_cast<const T*>(value), shapes, starts, static_cast<const LT*>(loc),
                                       static_cast<const LT*>(attn), static_cast<T*>(out), N, S, M, D, Lq, L, P);
    });
  });
}

extern "C" int msda_emu_backward(int dtype, int loc_float, const void* value, const int64_t* shapes,
                                 const int64_t* starts, const void* loc, const void* attn, const void* grad_out,
                                 void* grad_value, void* grad_loc, void* grad_attn, int64_t N, int64_t S, int64_t M,
                                 int64_t D, int64_t Lq, int L, int P, int64_t blocks, int threads) {
  return dispatch(dtype, loc_float, [&](auto* vt, auto* lt) {
    using T = std::remove_pointer_t<decltype(vt)>;
    using LT = std::remove_pointer_t<decltype(lt)>;
    using A = typename msda::AccType<T>::type;
    emu_launch(blocks, threads, [&] {
      msda::msda_backward_kernel<T, LT>(static_cast<const T*>(value), shapes, starts, static_cast<const LT*>(loc),
                                        static_cast<const LT*>(attn), static_cast<const T*>(grad_out),
                                        static_cast<A*>(grad_value), static_cast<A*>(grad_loc),
                                        static_cast<A*>(grad_attn), N, S, M, D, Lq, L, P);
    });
  });
}
