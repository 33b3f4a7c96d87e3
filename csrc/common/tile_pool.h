// The thread pool behind the fused CPU kernels' work sharing (cpu_tile.h: for_each_tile_group).
//
// The calling thread claims groups of point tiles from a shared counter, and so does each pool
// thread that wakes up while groups are left; the call returns once every group is done. Unlike
// an OpenMP parallel region, it never waits for a thread that has not started: on a machine
// shared with another busy process a woken thread may wait a whole scheduler slice for a core,
// and the calling thread does that thread's share meanwhile instead of idling at a barrier. It
// waits only for groups another thread has already claimed.
//
// Pool threads (named "omnifast-tiles") keep off the CPU their caller runs on, so that the
// scheduler does not stack them on the caller's core. They run the body with the caller's
// FTZ/DAZ bits and with single-threaded MKL, oneDNN and ATen parallelism (as inside an OpenMP
// region); so does the calling thread for the duration of the call. The pool survives fork() (a
// child starts a fresh one) and is never torn down (its threads sleep until the process exits).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

namespace omnifast {
namespace cpu_tile {

struct TileGroup {
  int64_t index = 0, first = 0, last = 0;  // group index and its tiles [first, last)
};

// Hands out the groups of one call, in order; claim(g) fills g and returns false once none is
// left. `thread` is 0 on the calling thread and 1, 2, ... on pool threads (for per-thread
// statistics only: which thread runs which group is not fixed).
struct TileClaim {
  std::atomic<int64_t>* next;
  int64_t ntiles, groups;
  int thread;
  bool operator()(TileGroup& g) const {
    const int64_t i = next->fetch_add(1, std::memory_order_relaxed);
    if (i >= groups) return false;
    g.index = i;
    g.first = i * ntiles / groups;
    g.last = (i + 1) * ntiles / groups;
    return true;
  }
};

// Runs body(claim) on the calling thread and on up to threads - 1 pool threads (at most
// groups in all) until every group is claimed and done. An exception thrown by any body is
// rethrown here after the others have stopped. Serial (the calling thread alone) when threads or
// groups is 1, or when called from inside a pool body or an OpenMP parallel region.
void run_tile_groups(int64_t ntiles, int64_t groups, int threads,
                     const std::function<void(const TileClaim&)>& body);

}  // namespace cpu_tile
}  // namespace omnifast
