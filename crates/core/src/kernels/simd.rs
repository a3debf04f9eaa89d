//! AVX-512 helpers the kernels share: lane masks, and the permutes that split 32 floats into
//! even and odd lanes and merge two vectors back lane by lane.

use std::arch::x86_64::*;

/// Lanes 0..n (all 16 for n ≥ 16).
pub fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Lanes 0..n of a pair of vectors holding 32 floats.
pub fn lanes32(n: usize) -> (__mmask16, __mmask16) {
    (lanes(n), lanes(n.saturating_sub(16)))
}

/// `_mm512_permutex2var_ps` indices taking the even and the odd lanes of two concatenated
/// vectors (the even indices double as 0, 2, .., 30).
#[target_feature(enable = "avx512f")]
#[inline]
pub fn even_odd() -> (__m512i, __m512i) {
    (
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
    )
}

/// `_mm512_permutex2var_ps` indices interleaving two vectors a, b: lanes 0..8 as
/// a0 b0 a1 b1 .., then lanes 8..16 likewise (the inverse of [`even_odd`]).
#[target_feature(enable = "avx512f")]
#[inline]
pub fn interleave() -> (__m512i, __m512i) {
    (
        _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
    )
}
