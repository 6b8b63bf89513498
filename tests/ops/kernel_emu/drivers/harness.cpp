// The drivers' main(), buffers and checks (harness.h).
#include "harness.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <map>

#ifdef WSLFAST_EMU
namespace emu {
int error_count();
}
extern "C" long emu_launch_count();
extern "C" long emu_block_count();
#endif

namespace harness {
namespace {
Options g_options;
int g_failures = 0, g_checks = 0;
double g_worst = 0.0;
std::map<std::string, std::pair<const char*, FamilyFn>>& registry() {
  static std::map<std::string, std::pair<const char*, FamilyFn>> r;
  return r;
}
}  // namespace

const Options& options() { return g_options; }

FamilyReg::FamilyReg(const char* name, const char* kernels, FamilyFn fn) { registry()[name] = {kernels, fn}; }

std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

float tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

#ifdef WSLFAST_EMU
void* device_alloc(size_t bytes) { return std::malloc(bytes == 0 ? 1 : bytes); }
void device_free(void* p) { std::free(p); }
void copy_to_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void copy_to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void device_sync(const char*) {}
bool emulated() { return true; }
long launches() { return emu_launch_count(); }
long blocks() { return emu_block_count(); }
int emulator_errors() { return emu::error_count(); }
long vector_loads() { return emu::g_vector_loads.load(); }
#else
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
void* device_alloc(size_t bytes) {
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, bytes == 0 ? 256 : bytes), "cudaMalloc");
  return p;
}
void device_free(void* p) { cudaFree(p); }
void copy_to_device(void* dst, const void* src, size_t bytes) {
  check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to the host");
}
void device_sync(const char* what) { check_cuda(cudaDeviceSynchronize(), what); }
bool emulated() { return false; }
long launches() { return 0; }
long blocks() { return 0; }
int emulator_errors() { return 0; }
long vector_loads() { return 0; }
#endif

void fail(const char* f, ...) {
  ++g_checks;
  if (++g_failures <= 40) {
    std::fprintf(stderr, "FAIL [%s] ", g_options.family.c_str());
    va_list ap;
    va_start(ap, f);
    std::vfprintf(stderr, f, ap);
    va_end(ap);
    std::fprintf(stderr, "\n");
  }
}

void expect(bool ok, const char* f, ...) {
  if (ok) {
    ++g_checks;
    return;
  }
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  fail("%s", buf);
}

int failures() { return g_failures; }
double worst_ratio() { return g_worst; }

void dump(const std::string& what, const std::vector<double>& values) {
  if (g_options.dump.empty()) return;
  std::string name;
  for (char c : what) name += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') ? c : '_';
  const std::string dir = g_options.dump + "/" + g_options.family;
  mkdir(g_options.dump.c_str(), 0755);
  mkdir(dir.c_str(), 0755);
  FILE* f = std::fopen((dir + "/" + name + ".f64").c_str(), "wb");
  if (f == nullptr) return;
  std::fwrite(values.data(), sizeof(double), values.size(), f);
  std::fclose(f);
}

int compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
            const std::vector<double>& tol) {
  dump(what, got);
  if (got.size() != want.size()) {
    fail("%s: %zu values, want %zu", what.c_str(), got.size(), want.size());
    return 1;
  }
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    if (std::isnan(w)) ok = std::isnan(g);
    else if (std::isinf(w)) ok = g == w;
    else {
      const double err = std::fabs(g - w), t = std::isnan(tol[i]) ? 0.0 : tol[i];
      ok = err <= t;  // false for NaN
      if (ok && t > 0) g_worst = std::max(g_worst, err / t);
    }
    if (!ok && ++bad <= 3)
      std::fprintf(stderr, "FAIL [%s] %s[%zu] = %.9g, want %.9g (tolerance %.3g)\n", g_options.family.c_str(),
                   what.c_str(), i, g, w, tol[i]);
  }
  ++g_checks;
  if (bad) {
    ++g_failures;
    std::fprintf(stderr, "FAIL [%s] %s: %d of %zu values wrong\n", g_options.family.c_str(), what.c_str(), bad,
                 got.size());
  }
  return bad;
}

int compare_exact(const std::string& what, const std::vector<double>& got, const std::vector<double>& want) {
  return compare(what, got, want, std::vector<double>(want.size(), 0.0));
}

}  // namespace harness

int main(int argc, char** argv) {
  using namespace harness;
  auto& reg = registry();
  if (argc < 2 || reg.count(argv[1]) == 0) {
    std::fprintf(stderr, "usage: %s FAMILY [--quick] [--dump DIR]\nfamilies:\n", argv[0]);
    for (const auto& kv : reg) std::fprintf(stderr, "  %-24s %s\n", kv.first.c_str(), kv.second.first);
    return 2;
  }
  g_options.family = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") g_options.quick = true;
    else if (a == "--dump" && i + 1 < argc) g_options.dump = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
#ifndef WSLFAST_EMU
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "%s: no CUDA device (this build runs the real kernels; the emulated one runs anywhere)\n",
                 argv[0]);
    return 2;
  }
#endif
  const auto& fam = reg[g_options.family];
  try {
    fam.second();
  } catch (const std::exception& e) {
    fail("uncaught exception: %s", e.what());
  }
  std::printf("%s (%s): %d checks, %d failures, %d emulator errors, %ld launches, %ld blocks, worst err/tol %.3g\n",
              g_options.family.c_str(), fam.first, g_checks, g_failures, emulator_errors(), launches(), blocks(),
              g_worst);
  return (g_failures || emulator_errors()) ? 1 : 0;
}
