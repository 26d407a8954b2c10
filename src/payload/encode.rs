//! DICOM bytes as the decimals of a JSON array: `,0,9,255`. The hot loop of the
//! zhiva payload (each input byte becomes 2-4 output bytes), so it writes into a
//! caller's buffer that is already large enough: no zero-filling, no growing.
//! [`encode_into`] takes the best SIMD version the CPU has (AVX2, SSSE3), else
//! the table-driven [`encode_scalar`]; all give the same bytes (tested against
//! each other, and fuzzed).

use super::simd;
pub use simd::{Level, LEVELS};

/// Output bytes per input byte, at most (`,255`).
pub const MAX_EXPANSION: usize = 4;

/// `,0` .. `,255` for every byte value, as 4 bytes (little-endian, unused
/// bytes zero) in the low half and the real length in the high half, so one
/// load gives both.
static DECIMALS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut s = [b',', 0, 0, 0];
        let len = if b >= 100 {
            s[1] = b'0' + (b / 100) as u8;
            s[2] = b'0' + (b / 10 % 10) as u8;
            s[3] = b'0' + (b % 10) as u8;
            4
        } else if b >= 10 {
            s[1] = b'0' + (b / 10) as u8;
            s[2] = b'0' + (b % 10) as u8;
            3
        } else {
            s[1] = b'0' + b as u8;
            2
        };
        t[b] = u32::from_le_bytes(s) as u64 | (len << 32);
        b += 1;
    }
    t
};

/// Writes `,d` for every byte of `src` into `dst`; returns the length written.
///
/// Panics if `dst` is shorter than [`MAX_EXPANSION`] times `src`.
pub fn encode_into(src: &[u8], dst: &mut [u8]) -> usize {
    assert!(
        dst.len() >= src.len() * MAX_EXPANSION,
        "encode_into: dst too short"
    );
    let (read, written) = simd::encode(src, dst).unwrap_or((0, 0));
    written + encode_scalar(&src[read..], &mut dst[written..])
}

/// [`encode_into`] at one SIMD `level` (`None`: scalar); `None` if the CPU does not have it.
pub fn encode_at(level: Option<Level>, src: &[u8], dst: &mut [u8]) -> Option<usize> {
    assert!(
        dst.len() >= src.len() * MAX_EXPANSION,
        "encode_at: dst too short"
    );
    let (read, written) = match level {
        Some(l) => simd::encode_at(l, src, dst)?,
        None => (0, 0),
    };
    Some(written + encode_scalar(&src[read..], &mut dst[written..]))
}

/// [`encode_into`] without SIMD: one table load and one 4-byte store per byte.
pub fn encode_scalar(src: &[u8], dst: &mut [u8]) -> usize {
    assert!(
        dst.len() >= src.len() * MAX_EXPANSION,
        "encode_scalar: dst too short"
    );
    let mut pos = 0;
    for &b in src {
        let e = DECIMALS[b as usize];
        // Always 4 bytes stored, the cursor moves by the real length: the next
        // store overwrites the padding. `pos + 4 <= 4 * (bytes so far)` by the assert.
        dst[pos..pos + 4].copy_from_slice(&(e as u32).to_le_bytes());
        pos += (e >> 32) as usize;
    }
    pos
}

/// The first byte of an instance: its decimal without the comma; returns the length (1-3).
pub fn encode_first(b: u8, dst: &mut [u8; 3]) -> usize {
    let e = DECIMALS[b as usize];
    let text = (e as u32).to_le_bytes();
    let len = (e >> 32) as usize - 1;
    dst.copy_from_slice(&text[1..]);
    len
}

/// Appends the decimals of `bytes` to `out`; `first` drops the leading comma
/// (the start of an instance). A convenience over [`encode_into`].
pub fn encode_bytes(bytes: &[u8], first: bool, out: &mut Vec<u8>) {
    let mut rest = bytes;
    if first {
        if let Some((&b, tail)) = bytes.split_first() {
            let mut d = [0u8; 3];
            let n = encode_first(b, &mut d);
            out.extend_from_slice(&d[..n]);
            rest = tail;
        }
    }
    let start = out.len();
    out.resize(start + rest.len() * MAX_EXPANSION, 0);
    let n = encode_into(rest, &mut out[start..]);
    out.truncate(start + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn expected(src: &[u8]) -> Vec<u8> {
        src.iter()
            .flat_map(|b| format!(",{b}").into_bytes())
            .collect()
    }

    #[test]
    fn every_byte_value_and_its_neighbours() {
        // Each value at many positions of the SIMD steps, beside every class of digit count.
        let mut levels: Vec<Option<Level>> = levels().into_iter().map(Some).collect();
        levels.push(None);
        for level in levels {
            for b in 0..=255u8 {
                for (i, other) in [0u8, 9, 10, 99, 100, 255].into_iter().enumerate() {
                    let mut src = vec![other; 72];
                    src[i * 5 % 32] = b;
                    src[32 + (b as usize % 32)] = b;
                    let mut dst = vec![0u8; src.len() * 4];
                    let n = encode_at(level, &src, &mut dst).unwrap();
                    assert_eq!(
                        dst[..n],
                        expected(&src)[..],
                        "{level:?}: {b} among {other}s"
                    );
                }
            }
        }
    }

    /// Every SIMD level this CPU has.
    fn levels() -> Vec<Level> {
        let levels: Vec<Level> = LEVELS
            .into_iter()
            .filter(|l| simd::encode_at(*l, &[], &mut []).is_some())
            .collect();
        if levels.is_empty() {
            eprintln!("no SIMD on this CPU: only the scalar encoder is tested");
        }
        levels
    }

    /// The property test: every SIMD level the CPU has agrees with the scalar
    /// encoder on random bytes of every length and alignment, and all are the
    /// reference text.
    #[test]
    fn simd_and_scalar_agree_on_random_bytes() {
        let ct: Vec<u8> = noise(7, 100_000)
            .iter()
            .enumerate()
            .map(|(i, b)| if i % 2 == 1 { b & 3 } else { *b })
            .collect();
        for level in levels() {
            for seed in 1..400u64 {
                let len = (seed as usize * 37) % 1500;
                let skew = seed as usize % 7;
                let src = noise(seed, len + skew);
                let src = &src[skew..];
                let mut a = vec![0u8; src.len() * 4];
                let mut b = vec![0xAAu8; src.len() * 4];
                let na = encode_at(Some(level), src, &mut a).unwrap();
                let nb = encode_scalar(src, &mut b);
                assert_eq!(a[..na], b[..nb], "{level:?} seed {seed}");
                assert_eq!(a[..na], expected(src)[..], "{level:?} seed {seed}");
            }
            // CT-like data: small values, long runs.
            let mut a = vec![0u8; ct.len() * 4];
            let mut b = vec![0u8; ct.len() * 4];
            let na = encode_at(Some(level), &ct, &mut a).unwrap();
            let nb = encode_scalar(&ct, &mut b);
            assert_eq!(a[..na], b[..nb], "{level:?}");
        }
    }

    #[test]
    fn each_simd_level_takes_its_whole_steps() {
        let src = noise(3, 64 + 17);
        for (level, step) in [(Level::Avx2, 32), (Level::Ssse3, 16)] {
            let mut dst = vec![0u8; src.len() * 4];
            if let Some((read, written)) = simd::encode_at(level, &src, &mut dst) {
                assert_eq!(read, src.len() / step * step, "{level:?}");
                assert_eq!(dst[..written], expected(&src[..read])[..], "{level:?}");
            }
        }
        assert_eq!(
            simd::encode(&src, &mut vec![0u8; 400]).is_some(),
            !levels().is_empty()
        );
    }

    #[test]
    fn first_byte_has_no_comma_and_pieces_join() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        encode_bytes(&all, true, &mut out);
        let back: Vec<u8> = serde_json::from_slice(&[b"[", &out[..], b"]"].concat()).unwrap();
        assert_eq!(back, all);
        let mut pieces = Vec::new();
        encode_bytes(&all[..100], true, &mut pieces);
        encode_bytes(&all[100..], false, &mut pieces);
        assert_eq!(pieces, out);
    }

    #[test]
    #[should_panic(expected = "dst too short")]
    fn a_short_destination_is_refused() {
        encode_into(&[1, 2, 3], &mut [0u8; 11]);
    }
}
