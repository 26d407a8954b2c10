//! The SSSE3 encoder: 16 input bytes per step, the only `unsafe` code of the
//! crate (`std::arch` intrinsics). Chosen at run time; [`super::encode`] falls
//! back to the scalar table where the CPU lacks SSSE3 or is not x86_64.
//!
//! Per 16 bytes: the hundreds, tens and ones digits are computed in 16-bit lanes
//! (multiply-high by reciprocals), interleaved with commas into four 16-byte
//! groups of `,htu` slots (one group per 4 input bytes), and each group is
//! compacted by one byte shuffle whose mask (and output length) a 256-entry
//! table gives for the group's digit counts. Each store writes 16 bytes, of
//! which the group's 8-16 are kept: the next store starts where they end.

/// Encodes the longest prefix of `src` that is a multiple of 16 bytes into
/// `dst` (at least 4 times `src`); returns (bytes read, bytes written), or
/// `None` without SSSE3.
#[cfg(target_arch = "x86_64")]
pub fn encode(src: &[u8], dst: &mut [u8]) -> Option<(usize, usize)> {
    if !std::arch::is_x86_feature_detected!("ssse3") {
        return None;
    }
    // SAFETY: the CPU supports SSSE3, checked just above.
    Some(unsafe { x86::encode_ssse3(src, dst) })
}

/// No SIMD encoder off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn encode(_src: &[u8], _dst: &mut [u8]) -> Option<(usize, usize)> {
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// For a group of 4 input bytes: bit i set if byte i has 2+ digits, bit 4+i
    /// if it has 3. Gives the shuffle keeping each slot's comma and its digits
    /// without leading zeros, and how many bytes that leaves.
    static GROUPS: [([u8; 16], u8); 256] = {
        let mut t = [([0x80u8; 16], 0u8); 256];
        let mut idx = 0;
        while idx < 256 {
            let mut p = 0;
            let mut i = 0;
            while i < 4 {
                let two = (idx >> i) & 1 == 1;
                let three = (idx >> (4 + i)) & 1 == 1;
                let slot = (i * 4) as u8;
                t[idx].0[p] = slot;
                p += 1;
                if three {
                    t[idx].0[p] = slot + 1;
                    p += 1;
                }
                if two || three {
                    t[idx].0[p] = slot + 2;
                    p += 1;
                }
                t[idx].0[p] = slot + 3;
                p += 1;
                i += 1;
            }
            t[idx].1 = p as u8;
            idx += 1;
        }
        t
    };

    /// # Safety
    /// The CPU must support SSSE3.
    #[target_feature(enable = "ssse3")]
    pub unsafe fn encode_ssse3(src: &[u8], dst: &mut [u8]) -> (usize, usize) {
        assert!(dst.len() >= src.len() * 4, "encode_ssse3: dst too short");
        let zero = _mm_setzero_si128();
        let comma = _mm_set1_epi8(b',' as i8);
        let ascii0 = _mm_set1_epi8(b'0' as i8);
        let flip = _mm_set1_epi8(i8::MIN);
        let over9 = _mm_set1_epi8((9u8 ^ 0x80) as i8);
        let over99 = _mm_set1_epi8((99u8 ^ 0x80) as i8);
        let mut pos = 0;
        let chunks = src.chunks_exact(16);
        let read = src.len() - chunks.remainder().len();
        for chunk in chunks {
            // SAFETY: `chunk` is 16 readable bytes; loadu needs no alignment.
            let x = _mm_loadu_si128(chunk.as_ptr().cast());
            let mut h = [zero; 2];
            let mut t = [zero; 2];
            let mut o = [zero; 2];
            for (k, v) in [_mm_unpacklo_epi8(x, zero), _mm_unpackhi_epi8(x, zero)]
                .into_iter()
                .enumerate()
            {
                // x / 100 = x * 656 >> 16 and r / 10 = r * 6554 >> 16, exact for x < 256, r < 100.
                h[k] = _mm_mulhi_epu16(v, _mm_set1_epi16(656));
                let r = _mm_sub_epi16(v, _mm_mullo_epi16(h[k], _mm_set1_epi16(100)));
                t[k] = _mm_mulhi_epu16(r, _mm_set1_epi16(6554));
                o[k] = _mm_sub_epi16(r, _mm_mullo_epi16(t[k], _mm_set1_epi16(10)));
            }
            let h = _mm_add_epi8(_mm_packus_epi16(h[0], h[1]), ascii0);
            let t = _mm_add_epi8(_mm_packus_epi16(t[0], t[1]), ascii0);
            let o = _mm_add_epi8(_mm_packus_epi16(o[0], o[1]), ascii0);
            // Unsigned x > 9 and x > 99, through signed compares of x ^ 0x80.
            let xs = _mm_xor_si128(x, flip);
            let two = _mm_movemask_epi8(_mm_cmpgt_epi8(xs, over9)) as usize;
            let three = _mm_movemask_epi8(_mm_cmpgt_epi8(xs, over99)) as usize;
            let ch = [_mm_unpacklo_epi8(comma, h), _mm_unpackhi_epi8(comma, h)];
            let tu = [_mm_unpacklo_epi8(t, o), _mm_unpackhi_epi8(t, o)];
            let slots = [
                _mm_unpacklo_epi16(ch[0], tu[0]),
                _mm_unpackhi_epi16(ch[0], tu[0]),
                _mm_unpacklo_epi16(ch[1], tu[1]),
                _mm_unpackhi_epi16(ch[1], tu[1]),
            ];
            for (g, slot) in slots.into_iter().enumerate() {
                let (mask, len) = &GROUPS[(two >> (4 * g)) & 0xF | ((three >> (4 * g)) & 0xF) << 4];
                // SAFETY: `mask` is 16 readable bytes; loadu needs no alignment.
                let packed = _mm_shuffle_epi8(slot, _mm_loadu_si128(mask.as_ptr().cast()));
                // The groups so far took at most 4 bytes per input byte, so 16 more
                // fit in `dst` (the assert above); the slice is bounds-checked anyway.
                let out = &mut dst[pos..pos + 16];
                // SAFETY: `out` is 16 writable bytes; storeu needs no alignment.
                _mm_storeu_si128(out.as_mut_ptr().cast(), packed);
                pos += *len as usize;
            }
        }
        (read, pos)
    }
}
