// wslfast._dedup: the lookup loop of wslfast.data.build.dedup.HashIndex, an exact multi-index hash over 64-bit
// perceptual hashes (Norouzi et al., CVPR 2012). The 64 bits are cut into S substrings; a reference
// within r bits of a query agrees with it within floor(r / S) bits on some substring, so each
// query probes, per substring, the buckets its own substring reaches by the given flip masks and checks
// the full distance of only the hashes found there.
//
// No torch here on purpose: the data tools (and their Ray workers) import without torch. The tables are
// built in numpy (dedup.py) and passed in; everything is validated before the loop, so no input can make
// it read outside its arrays. One thread per call, GIL released: the pipeline runs one call per block and
// parallelises over blocks. The loop (hamming_lookup.h) is built for AVX2 and for the baseline ISA and
// picked at run time, as conv_bn_cpu.cpp does.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

using u64 = std::uint64_t;
template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

constexpr int kMaxSubs = 64, kMaxWidth = 24;

// Substring s is bits [shift[s], shift[s] + width[s]) of a hash. Its table: refs[s] holds the references
// ordered by that substring, and bucket k is refs[s][starts[base[s] + k] .. starts[base[s] + k + 1]).
// masks are sorted, so those below 2^width[s] (the ones that stay inside substring s) are a prefix.
struct Tables {
  const u64* refs;
  const std::int64_t* starts;
  const u64* masks;
  std::int64_t subs, n;
  int radius;
  int shift[kMaxSubs], width[kMaxSubs];
  std::int64_t base[kMaxSubs], num_masks[kMaxSubs];
};

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WSLFAST_DEDUP_MULTIVERSION 1
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
#define WSLFAST_DEDUP_NS avx2
#define WSLFAST_DEDUP_AVX2 1
#include "hamming_lookup.h"
#undef WSLFAST_DEDUP_AVX2
#undef WSLFAST_DEDUP_NS
#pragma GCC pop_options
#endif

#define WSLFAST_DEDUP_NS base
#include "hamming_lookup.h"
#undef WSLFAST_DEDUP_NS

namespace {

void lookup(const Tables& t, const u64* q, std::int64_t count, bool* out, bool simd) {
#ifdef WSLFAST_DEDUP_MULTIVERSION
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  if (avx2 && simd) return avx2::lookup(t, q, count, out);
#endif
  base::lookup(t, q, count, out);
}

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("hamming_contains_near: " + what); }

py::array_t<bool> contains_near(carray<u64> queries, carray<u64> refs, carray<std::int64_t> widths,
                                carray<std::int64_t> starts, carray<u64> masks, int radius, bool simd) {
  if (radius < 0 || radius > 64) fail("radius must be in [0, 64], got " + std::to_string(radius));
  if (queries.ndim() != 1 || refs.ndim() != 2 || widths.ndim() != 1 || starts.ndim() != 1 || masks.ndim() != 1)
    fail("expected queries [Q], refs [S, N], widths [S], starts [sum of 2^width + 1] and masks [M]");
  Tables t{};
  t.refs = refs.data(), t.starts = starts.data(), t.masks = masks.data();
  t.subs = refs.shape(0), t.n = refs.shape(1), t.radius = radius;
  if (t.subs < 1 || t.subs > kMaxSubs || widths.shape(0) != t.subs)
    fail("widths must give one width per table (1 to 64 tables), got " + std::to_string(widths.shape(0)) +
         " widths for " + std::to_string(t.subs) + " tables");
  const std::int64_t num_masks = masks.shape(0);
  for (std::int64_t m = 1; m < num_masks; ++m)
    if (t.masks[m] <= t.masks[m - 1]) fail("flip masks must be sorted and unique");
  std::int64_t shift = 0, base = 0;
  for (std::int64_t s = 0; s < t.subs; ++s) {
    const std::int64_t w = widths.data()[s];
    if (w < 1 || w > kMaxWidth || shift + w > 64)
      fail("substring widths must be in [1, 24] and sum to at most 64 bits");
    const std::int64_t buckets = std::int64_t{1} << w;
    if (base + buckets + 1 > starts.shape(0)) fail("starts is shorter than the tables' buckets");
    // Bucket bounds: from 0, never decreasing, to N, so that every read stays inside refs.
    const std::int64_t* st = t.starts + base;
    if (st[0] != 0 || st[buckets] != t.n) fail("starts of table " + std::to_string(s) + " must run from 0 to N");
    for (std::int64_t k = 0; k < buckets; ++k)
      if (st[k + 1] < st[k]) fail("starts of table " + std::to_string(s) + " decrease at bucket " + std::to_string(k));
    std::int64_t fit = 0;
    while (fit < num_masks && (t.masks[fit] >> w) == 0) ++fit;
    t.shift[s] = static_cast<int>(shift), t.width[s] = static_cast<int>(w), t.base[s] = base, t.num_masks[s] = fit;
    shift += w, base += buckets + 1;
  }
  if (base != starts.shape(0)) fail("starts is longer than the tables' buckets");
  int widest = 0;
  for (std::int64_t s = 0; s < t.subs; ++s) widest = std::max(widest, t.width[s]);
  if (num_masks > 0 && (t.masks[num_masks - 1] >> widest) != 0) fail("flip masks have bits above the substring");
  const std::int64_t count = queries.shape(0);
  py::array_t<bool> out(count);
  const u64* q = queries.data();
  bool* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    lookup(t, q, count, o, simd);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_dedup, m) {
  m.doc() = "Exact Hamming-radius lookups of 64-bit hashes in a multi-index hash (wslfast.data.build.dedup).";
  m.def("hamming_contains_near", &contains_near, py::arg("queries"), py::arg("refs"), py::arg("widths"),
        py::arg("starts"), py::arg("masks"), py::arg("radius"), py::arg("simd") = true,
        "Bool [Q]: some reference hash lies within `radius` bits of query i (tables from dedup.HashIndex). "
        "simd=False takes the baseline-ISA loop even where AVX2 is available (tests compare the two).");
}
