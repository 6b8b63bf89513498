// The lookup loop of hamming_index.cpp, compiled twice there: for AVX2 (WSLFAST_DEDUP_AVX2: each bucket
// scanned 4 hashes at a time, popcount by a nibble table and a sum of absolute differences) and for the
// baseline ISA, each in its own namespace (WSLFAST_DEDUP_NS). No include guard on purpose.
namespace WSLFAST_DEDUP_NS {

// Some hash of p[0, n) lies within `radius` bits of h. Branch-free over the bucket: buckets hold N / 2^w
// hashes and almost never a match, so a per-hash exit would only cost mispredictions.
inline bool any_within(const u64* p, std::int64_t n, u64 h, int radius) {
  std::int64_t j = 0;
  bool any = false;
#ifdef WSLFAST_DEDUP_AVX2
  const __m256i nibble_bits = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                               0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  const __m256i hv = _mm256_set1_epi64x(static_cast<long long>(h)), limit = _mm256_set1_epi64x(radius + 1);
  __m256i found = zero;
  for (; j + 4 <= n; j += 4) {
    const __m256i x = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + j)), hv);
    const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(nibble_bits, _mm256_and_si256(x, low4)),
                                          _mm256_shuffle_epi8(nibble_bits, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4)));
    const __m256i bits = _mm256_sad_epu8(bytes, zero);  // popcount of each 64-bit lane
    found = _mm256_or_si256(found, _mm256_cmpgt_epi64(limit, bits));
  }
  any = !_mm256_testz_si256(found, found);
#endif
  unsigned tail = 0;
  for (; j < n; ++j) tail |= static_cast<unsigned>(__builtin_popcountll(h ^ p[j]) <= radius);
  return any || tail != 0;
}

void lookup(const Tables& t, const u64* q, std::int64_t count, bool* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    const u64 h = q[i];
    bool hit = false;
    for (std::int64_t s = 0; s < t.subs && !hit; ++s) {
      const u64 sub = (h >> t.shift[s]) & ((u64{1} << t.width[s]) - 1);
      const u64* refs = t.refs + s * t.n;
      const std::int64_t* starts = t.starts + t.base[s];
      for (std::int64_t m = 0; m < t.num_masks[s] && !hit; ++m) {
        const u64 key = sub ^ t.masks[m];
        hit = any_within(refs + starts[key], starts[key + 1] - starts[key], h, t.radius);
      }
    }
    out[i] = hit;
  }
}

}  // namespace WSLFAST_DEDUP_NS
