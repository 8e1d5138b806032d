/* profile.cu — time per kernel family for benchmarks (f2_cuda_profile): while on, the dispatch brackets
 * each GPU op with two CUDA events from a reused pool; the report sums elapsed times per name. Events
 * are only recorded eagerly: inside a graph capture they would become graph nodes. */
#include "f2_cuda.cuh"

#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

namespace {
struct Mark {
  const char *name;
  int start, stop;   /* event indices */
};
struct Profile {
  bool on = false;
  std::vector<cudaEvent_t> events;
  int used = 0;
  std::vector<Mark> marks;
};
Profile &profile() {
  static Profile p;
  return p;
}
int next_event(Profile &p) {
  if (p.used == (int)p.events.size()) {
    cudaEvent_t e;
    if (cudaEventCreate(&e) != cudaSuccess) return -1;
    p.events.push_back(e);
  }
  return p.used++;
}
}  // namespace

extern "C" int f2_prof_begin(const char *name) {
  Profile &p = profile();
  if (!p.on || f2_cuda_is_capturing()) return -1;
  int a = next_event(p), b = next_event(p);
  if (a < 0 || b < 0 || cudaEventRecord(p.events[a], f2_cuda_stream()) != cudaSuccess) return -1;
  p.marks.push_back({name, a, b});
  return (int)p.marks.size() - 1;
}

extern "C" int f2_prof_end(int slot, int rc) {
  Profile &p = profile();
  if (slot >= 0 && slot < (int)p.marks.size()) cudaEventRecord(p.events[p.marks[slot].stop], f2_cuda_stream());
  return rc;
}

extern "C" int f2_cuda_profile(int32_t on) {
  F2_TRY(f2_cuda_require("profiling"));
  Profile &p = profile();
  p.on = on != 0;
  p.marks.clear();
  p.used = 0;
  return F2_OK;
}

extern "C" int f2_cuda_profile_report(char *buf, size_t size) {
  F2_TRY(f2_cuda_require("profiling"));
  Profile &p = profile();
  F2_CUDA_CHECK(cudaStreamSynchronize(f2_cuda_stream()));
  struct Sum {
    double ms = 0;
    long calls = 0;
  };
  std::unordered_map<std::string, Sum> sums;
  for (const Mark &m : p.marks) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, p.events[m.start], p.events[m.stop]) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    Sum &s = sums[m.name];
    s.ms += ms;
    s.calls++;
  }
  std::vector<std::pair<std::string, Sum>> rows(sums.begin(), sums.end());
  std::sort(rows.begin(), rows.end(), [](const auto &a, const auto &b) { return a.second.ms > b.second.ms; });
  size_t n = 0;
  if (size) buf[0] = 0;
  for (auto &r : rows) {
    if (n >= size) break;
    int w = snprintf(buf + n, size - n, "%s %ld %.4f\n", r.first.c_str(), r.second.calls, r.second.ms);
    if (w < 0) break;
    n += (size_t)w;
  }
  p.marks.clear();
  p.used = 0;
  return F2_OK;
}
