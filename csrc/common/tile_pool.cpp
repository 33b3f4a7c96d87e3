// The fused CPU kernels' thread pool (tile_pool.h).
#include "common/tile_pool.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/float_mode.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __unix__
#include <pthread.h>
#endif
#ifdef __linux__
#include <sched.h>
#endif

// MKL's per-thread thread count, where the MKL that ATen links exports it (weak: builds and runs
// without MKL too). The exported entry takes its argument by address (Fortran convention) and
// returns the previous per-thread setting; 0 means "follow the global one".
extern "C" int mkl_set_num_threads_local_(const int*) __attribute__((weak));

namespace {
int set_mkl_threads_here(int n) {
  return mkl_set_num_threads_local_ ? mkl_set_num_threads_local_(&n) : 0;
}
}  // namespace

namespace omnifast {
namespace cpu_tile {
namespace {

thread_local bool tl_in_body = false;

// The CPU the calling thread runs on now, or -1 where that cannot be known.
int current_cpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

// Keeps a pool thread off the CPU its caller runs on (within the CPUs the pool thread started
// with). Without it the scheduler tends to wake a helper on its waker's CPU: beside a busy
// process that stacks both of a fit's threads on one core while the busy process has the other
// (measured: a 2-thread fit then gets 1.1 cores, docs/design.md "CPU work sharing").
class StayApart {
 public:
  StayApart() {
#ifdef __linux__
    known_ = sched_getaffinity(0, sizeof(start_), &start_) == 0;
#endif
  }
  void from(int cpu) {
#ifdef __linux__
    if (!known_ || cpu < 0 || cpu == avoided_ || cpu >= CPU_SETSIZE) return;
    cpu_set_t set = start_;
    CPU_CLR(cpu, &set);
    if (CPU_COUNT(&set) > 0) sched_setaffinity(0, sizeof(set), &set);
    avoided_ = cpu;
#else
    (void)cpu;
#endif
  }

 private:
#ifdef __linux__
  cpu_set_t start_;
#endif
  bool known_ = false;
  int avoided_ = -1;
};

// Makes the matrix products and ATen ops of a body single-threaded on this thread (OpenMP's
// per-thread team size, which ATen's parallel_for and oneDNN follow, and MKL's per-thread count),
// as they are inside an OpenMP parallel region; restores both on scope exit.
class SerialMath {
 public:
  SerialMath() {
#ifdef _OPENMP
    omp_threads_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    mkl_before_ = set_mkl_threads_here(1);
  }
  ~SerialMath() {
#ifdef _OPENMP
    omp_set_num_threads(omp_threads_);
#endif
    set_mkl_threads_here(mkl_before_);
  }
  SerialMath(const SerialMath&) = delete;
  SerialMath& operator=(const SerialMath&) = delete;

 private:
  int omp_threads_ = 1;
  int mkl_before_ = 0;
};

struct Job {
  const std::function<void(const TileClaim&)>* body = nullptr;
  std::atomic<int64_t> next{0};
  int64_t ntiles = 0, groups = 0;
  unsigned float_mode = 0;
  int helpers_wanted = 0;
  int caller_cpu = -1;
  // guarded by Pool::mutex
  int helpers_joined = 0, helpers_active = 0;
  bool closed = false;
  std::exception_ptr error;
  std::condition_variable helpers_done;
};

class Pool {
 public:
  // Publishes job to up to job->helpers_wanted pool threads (starting threads as needed).
  void publish(const std::shared_ptr<Job>& job) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (int(started_) < job->helpers_wanted) {
      const int index = int(++started_);
      std::thread([this, index] { serve(index); }).detach();
    }
    current_ = job;
    ++generation_;
    wake_.notify_all();
  }

  // Stops new helpers joining job and waits for those that joined to finish.
  void close(const std::shared_ptr<Job>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    job->closed = true;
    if (current_ == job) current_.reset();
    job->helpers_done.wait(lock, [&] { return job->helpers_active == 0; });
  }

 private:
  void serve(int index) {
#ifdef __linux__
    pthread_setname_np(pthread_self(), "omnifast-tiles");
#endif
    (void)at::get_num_threads();  // ATen's per-thread setup first: it sets the thread counts
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    set_mkl_threads_here(1);
    tl_in_body = true;  // a kernel called from a body runs serially on its thread
    StayApart apart;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      const std::shared_ptr<Job> job = current_;
      if (!job || job->closed || job->helpers_joined >= job->helpers_wanted) continue;
      ++job->helpers_joined;
      ++job->helpers_active;
      lock.unlock();
      set_float_mode_bits(job->float_mode);
      apart.from(job->caller_cpu);
      std::exception_ptr error;
      try {
        (*job->body)(TileClaim{&job->next, job->ntiles, job->groups, index});
      } catch (...) {
        error = std::current_exception();
        job->next.store(job->groups);  // the others stop claiming
      }
      lock.lock();
      if (error && !job->error) job->error = error;
      if (--job->helpers_active == 0) job->helpers_done.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<Job> current_;
  uint64_t generation_ = 0;
  unsigned started_ = 0;
};

// The process's pool, created on first use. Never destroyed: detached threads may still wait on
// its condition variable at exit. A forked child (where the parent's pool threads do not exist)
// forgets it and starts its own.
Pool* g_pool = nullptr;
std::mutex g_pool_mutex;

void forget_pool_in_child() {
  g_pool = nullptr;
  new (&g_pool_mutex) std::mutex();
}

Pool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) {
    static const bool registered = [] {
#ifdef __unix__
      pthread_atfork(nullptr, nullptr, forget_pool_in_child);
#endif
      return true;
    }();
    (void)registered;
    g_pool = new Pool();
  }
  return *g_pool;
}

}  // namespace

void run_tile_groups(int64_t ntiles, int64_t groups, int threads,
                     const std::function<void(const TileClaim&)>& body) {
  if (ntiles <= 0 || groups <= 0) return;
  bool nested = tl_in_body;
#ifdef _OPENMP
  nested = nested || omp_in_parallel();
#endif
  const int helpers =
      nested ? 0 : int(std::min<int64_t>(groups, std::max(threads, 1)) - 1);
  auto job = std::make_shared<Job>();
  job->body = &body;
  job->ntiles = ntiles;
  job->groups = groups;
  job->float_mode = float_mode_bits();
  job->helpers_wanted = helpers;
  job->caller_cpu = current_cpu();

  SerialMath serial;
  const bool was_in_body = tl_in_body;
  tl_in_body = true;
  Pool* helper_pool = helpers > 0 ? &pool() : nullptr;
  if (helper_pool) helper_pool->publish(job);
  std::exception_ptr error;
  try {
    body(TileClaim{&job->next, ntiles, groups, 0});
  } catch (...) {
    error = std::current_exception();
    job->next.store(groups);
  }
  if (helper_pool) helper_pool->close(job);
  tl_in_body = was_in_body;
  if (error) std::rethrow_exception(error);
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace cpu_tile
}  // namespace omnifast
