// The calling thread's flush-to-zero (FTZ) and denormals-are-zero (DAZ) bits: on x86-64 two bits
// of the thread's own MXCSR register; elsewhere always off and not settable.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define OMNIFAST_HAS_MXCSR 1
#endif

namespace omnifast {

constexpr unsigned kFtzDaz = 0x8040u;  // MXCSR bit 15 (FTZ) and bit 6 (DAZ)

// This thread's FTZ/DAZ bits (a subset of kFtzDaz).
inline unsigned float_mode_bits() {
#ifdef OMNIFAST_HAS_MXCSR
  return _mm_getcsr() & kFtzDaz;
#else
  return 0;
#endif
}

// Sets this thread's FTZ/DAZ bits to `bits` (a subset of kFtzDaz), the rest of MXCSR unchanged.
inline void set_float_mode_bits(unsigned bits) {
#ifdef OMNIFAST_HAS_MXCSR
  _mm_setcsr((_mm_getcsr() & ~kFtzDaz) | (bits & kFtzDaz));
#else
  (void)bits;
#endif
}

}  // namespace omnifast
