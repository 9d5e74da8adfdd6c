// Runs the CUDA kernels of ops/csrc/ms_deform_attn_kernels.cuh on the CPU (test helper, host compiler only).
//
// Each warp is executed by 32 cooperative user-level contexts (ucontext), one per lane, on one OS thread:
// the scheduler resumes lanes round-robin with threadIdx / blockIdx set for that lane. __shfl_xor_sync
// publishes the lane's value and yields until all 32 lanes have published (then reads its partner's value
// and yields again), like a converged warp on the GPU; if some lanes have exited while others wait in a
// shuffle (a divergent warp-level call) the launch fails. atomicAdd is a plain add (one OS thread).
// This executes the kernels' real index math, grid-stride loop, warp reductions and scatter on CPU-only CI.
// Built by tests/unit/ops/test_ops_cuda_emulation.py: g++ -std=c++20 -shared -fPIC -I<cuda>/include -I ops/csrc
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <math.h>
#include <type_traits>
#include <functional>
#include <vector>

struct EmuDim { unsigned x = 0, y = 1, z = 1; };
EmuDim threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
constexpr size_t kStack = 256 * 1024;
enum class State { kRunning, kAtShuffle, kDone };
struct Lane {
  ucontext_t ctx;
  std::vector<char> stack = std::vector<char>(kStack);
  State state = State::kRunning;
};
ucontext_t scheduler;
Lane* lanes = nullptr;
int current = 0;
double slots[32];
bool diverged = false;

inline void yield_at_shuffle() {
  lanes[current].state = State::kAtShuffle;
  swapcontext(&lanes[current].ctx, &scheduler);
}
}  // namespace emu

template <typename T>
T __shfl_xor_sync(unsigned, T v, int offset) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  emu::slots[lane] = static_cast<double>(v);
  emu::yield_at_shuffle();  // all lanes have written
  const T r = static_cast<T>(emu::slots[lane ^ offset]);
  emu::yield_at_shuffle();  // all lanes have read
  return r;
}

template <typename T>
T atomicAdd(T* address, T v) {
  const T old = *address;
  *address = old + v;
  return old;
}

#ifndef __global__
#define __global__
#endif
#include "ms_deform_attn_kernels.cuh"

namespace {

std::function<void()>* lane_body = nullptr;

void lane_entry() {
  (*lane_body)();
  emu::lanes[emu::current].state = emu::State::kDone;
  // returning resumes uc_link (the scheduler)
}

// Runs body() as every thread of a 1-D launch, warp by warp. Returns false if a warp diverged at a shuffle.
bool emu_launch(int64_t blocks, int threads, std::function<void()> body) {
  gridDim.x = static_cast<unsigned>(blocks);
  blockDim.x = static_cast<unsigned>(threads);
  lane_body = &body;
  std::vector<emu::Lane> lanes(32);
  emu::lanes = lanes.data();
  for (int64_t b = 0; b < blocks; ++b) {
    for (int w = 0; w < threads / 32; ++w) {
      for (int i = 0; i < 32; ++i) {
        getcontext(&lanes[i].ctx);
        lanes[i].ctx.uc_stack.ss_sp = lanes[i].stack.data();
        lanes[i].ctx.uc_stack.ss_size = lanes[i].stack.size();
        lanes[i].ctx.uc_link = &emu::scheduler;
        makecontext(&lanes[i].ctx, lane_entry, 0);
        lanes[i].state = emu::State::kRunning;
      }
      for (;;) {
        int done = 0, waiting = 0;
        for (int i = 0; i < 32; ++i) {
          if (lanes[i].state == emu::State::kDone) continue;
          blockIdx.x = static_cast<unsigned>(b);
          threadIdx.x = static_cast<unsigned>(w * 32 + i);
          emu::current = i;
          lanes[i].state = emu::State::kRunning;
          swapcontext(&emu::scheduler, &lanes[i].ctx);
        }
        for (int i = 0; i < 32; ++i) {
          done += lanes[i].state == emu::State::kDone;
          waiting += lanes[i].state == emu::State::kAtShuffle;
        }
        if (done == 32) break;
        if (done > 0 && waiting > 0) return false;  // lanes wait in a shuffle that exited lanes never reach
      }
    }
  }
  return true;
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
  bool ok = true;
  const int rc = dispatch(dtype, loc_float, [&](auto* vt, auto* lt) {
    using T = std::remove_pointer_t<decltype(vt)>;
    using LT = std::remove_pointer_t<decltype(lt)>;
    ok = emu_launch(blocks, threads, [&] {
      msda::msda_forward_kernel<T, LT>(static_cast<const T*>(value), shapes, starts, static_cast<const LT*>(loc),
                                       static_cast<const LT*>(attn), static_cast<T*>(out), N, S, M, D, Lq, L, P);
    });
  });
  return rc != 0 ? rc : (ok ? 0 : 2);  // 2: a warp diverged at a shuffle
}

// fixed_scale > 0: grad_value is an int64 fixed-point buffer (the deterministic mode), else an acc_t buffer.
extern "C" int msda_emu_backward(int dtype, int loc_float, const void* value, const int64_t* shapes,
                                 const int64_t* starts, const void* loc, const void* attn, const void* grad_out,
                                 void* grad_value, void* grad_loc, void* grad_attn, int64_t N, int64_t S, int64_t M,
                                 int64_t D, int64_t Lq, int L, int P, int64_t blocks, int threads,
                                 double fixed_scale) {
  bool ok = true;
  const int rc = dispatch(dtype, loc_float, [&](auto* vt, auto* lt) {
    using T = std::remove_pointer_t<decltype(vt)>;
    using LT = std::remove_pointer_t<decltype(lt)>;
    using A = typename msda::AccType<T>::type;
    auto run = [&](auto* gv) {
      using G = std::remove_pointer_t<decltype(gv)>;
      return emu_launch(blocks, threads, [&] {
        msda::msda_backward_kernel<T, LT, G>(static_cast<const T*>(value), shapes, starts,
                                             static_cast<const LT*>(loc), static_cast<const LT*>(attn),
                                             static_cast<const T*>(grad_out), gv, static_cast<A*>(grad_loc),
                                             static_cast<A*>(grad_attn), N, S, M, D, Lq, L, P, fixed_scale);
      });
    };
    ok = fixed_scale > 0 ? run(static_cast<unsigned long long*>(grad_value)) : run(static_cast<A*>(grad_value));
  });
  return rc != 0 ? rc : (ok ? 0 : 2);  // 2: a warp diverged at a shuffle
}
