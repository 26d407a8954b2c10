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
//! About 1.6 times the scalar table's speed here (4-6 GB/s of output).

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
    /// without leading zeros (16-byte aligned, for aligned loads).
    #[repr(align(16))]
    struct Masks([[u8; 16]; 256]);

    static MASKS: Masks = {
        let mut t = [[0x80u8; 16]; 256];
        let mut idx = 0;
        while idx < 256 {
            let mut p = 0;
            let mut i = 0;
            while i < 4 {
                let two = (idx >> i) & 1 == 1;
                let three = (idx >> (4 + i)) & 1 == 1;
                let slot = (i * 4) as u8;
                t[idx][p] = slot;
                p += 1;
                if three {
                    t[idx][p] = slot + 1;
                    p += 1;
                }
                if two || three {
                    t[idx][p] = slot + 2;
                    p += 1;
                }
                t[idx][p] = slot + 3;
                p += 1;
                i += 1;
            }
            idx += 1;
        }
        Masks(t)
    };

    /// How many bytes the shuffle of the same index keeps (8-16).
    static LENS: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut idx = 0;
        while idx < 256 {
            let mut n = 0;
            let mut i = 0;
            while i < 4 {
                n += 2 + ((idx >> i) & 1 | (idx >> (4 + i)) & 1) + ((idx >> (4 + i)) & 1);
                i += 1;
            }
            t[idx] = n as u8;
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
            let (lo, hi) = (_mm_unpacklo_epi8(x, zero), _mm_unpackhi_epi8(x, zero));
            // x / 100 = x * 656 >> 16 and r / 10 = r * 6554 >> 16, exact for x < 256, r < 100.
            let (hl, hh) = (
                _mm_mulhi_epu16(lo, _mm_set1_epi16(656)),
                _mm_mulhi_epu16(hi, _mm_set1_epi16(656)),
            );
            let rl = _mm_sub_epi16(lo, _mm_mullo_epi16(hl, _mm_set1_epi16(100)));
            let rh = _mm_sub_epi16(hi, _mm_mullo_epi16(hh, _mm_set1_epi16(100)));
            let (tl, th) = (
                _mm_mulhi_epu16(rl, _mm_set1_epi16(6554)),
                _mm_mulhi_epu16(rh, _mm_set1_epi16(6554)),
            );
            let ol = _mm_sub_epi16(rl, _mm_mullo_epi16(tl, _mm_set1_epi16(10)));
            let oh = _mm_sub_epi16(rh, _mm_mullo_epi16(th, _mm_set1_epi16(10)));
            let h = _mm_add_epi8(_mm_packus_epi16(hl, hh), ascii0);
            let t = _mm_add_epi8(_mm_packus_epi16(tl, th), ascii0);
            let o = _mm_add_epi8(_mm_packus_epi16(ol, oh), ascii0);
            // Unsigned x > 9 and x > 99, through signed compares of x ^ 0x80;
            // interleaved by 4 bytes, one movemask gives two groups' table indices.
            let xs = _mm_xor_si128(x, flip);
            let (two, three) = (_mm_cmpgt_epi8(xs, over9), _mm_cmpgt_epi8(xs, over99));
            let m01 = _mm_movemask_epi8(_mm_unpacklo_epi32(two, three)) as usize;
            let m23 = _mm_movemask_epi8(_mm_unpackhi_epi32(two, three)) as usize;
            let (ch0, ch1) = (_mm_unpacklo_epi8(comma, h), _mm_unpackhi_epi8(comma, h));
            let (tu0, tu1) = (_mm_unpacklo_epi8(t, o), _mm_unpackhi_epi8(t, o));
            let groups = [
                (_mm_unpacklo_epi16(ch0, tu0), m01 & 0xFF),
                (_mm_unpackhi_epi16(ch0, tu0), m01 >> 8),
                (_mm_unpacklo_epi16(ch1, tu1), m23 & 0xFF),
                (_mm_unpackhi_epi16(ch1, tu1), m23 >> 8),
            ];
            // The bytes so far took at most 4 output bytes each, so these 16 take
            // at most 64 more, within `dst` by the assert; the slice is checked anyway.
            let out = &mut dst[pos..pos + 64];
            let mut at = 0;
            for (slots, idx) in groups {
                // SAFETY: MASKS is 16-byte aligned, each entry 16 bytes.
                let mask = _mm_load_si128(MASKS.0[idx].as_ptr().cast());
                // SAFETY: at <= 48 (three groups of at most 16), so out[at..at + 16]
                // is within the 64-byte `out`; storeu needs no alignment.
                _mm_storeu_si128(out[at..].as_mut_ptr().cast(), _mm_shuffle_epi8(slots, mask));
                at += LENS[idx] as usize;
            }
            pos += at;
        }
        (read, pos)
    }
}
