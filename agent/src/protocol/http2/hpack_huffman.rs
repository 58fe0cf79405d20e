//! The HPACK Huffman code (RFC 7541 Appendix B).
//!
//! The code is canonical: codes of equal length are consecutive in symbol
//! order, and every length starts where the shorter ones left off. So the
//! whole table is given by the code length of each symbol (256 octets and
//! EOS), and the codes themselves are derived below at compile time.

/// Code length in bits of each symbol; index 256 is EOS.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x000..
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x010..
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x020..
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x030..
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x040..
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x050..
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x060..
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x070..
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x080..
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x090..
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0x0a0..
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0x0b0..
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0x0c0..
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0x0d0..
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0x0e0..
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0x0f0..
    30, // 0x100..
];

/// The end-of-string symbol; it must never appear decoded.
const EOS: u16 = 256;
/// Longest code, in bits.
const MAX_LEN: usize = 30;

/// What canonical decoding needs, per code length: the first code of that
/// length, how many codes have it, and where its symbols start in `symbols`.
struct Canonical {
    first_code: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    /// Symbols sorted by (code length, symbol).
    symbols: [u16; 257],
    /// The code of each symbol (for the encoder).
    codes: [u32; 257],
}

const fn build() -> Canonical {
    let mut c = Canonical {
        first_code: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
        offset: [0; MAX_LEN + 1],
        symbols: [0; 257],
        codes: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        c.count[CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    // First code and symbol offset of each length.
    let mut code: u32 = 0;
    let mut offset: u16 = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        c.first_code[len] = code;
        c.offset[len] = offset;
        code = (code + c.count[len] as u32) << 1;
        offset += c.count[len];
        len += 1;
    }
    // Symbols in canonical order, and each symbol's code.
    let mut next = c.offset;
    let mut next_code = c.first_code;
    let mut s = 0;
    while s < 257 {
        let len = CODE_LENGTHS[s] as usize;
        c.symbols[next[len] as usize] = s as u16;
        next[len] += 1;
        c.codes[s] = next_code[len];
        next_code[len] += 1;
        s += 1;
    }
    c
}

static CANON: Canonical = build();

/// Why a Huffman-coded string is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HuffmanError {
    /// The EOS symbol was decoded.
    Eos,
    /// More than 7 bits of padding, or padding that is not all ones.
    Padding,
}

/// Decodes a Huffman-coded string, appending the octets to `out`.
pub(super) fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let c = &CANON;
    // The code read so far and its length in bits.
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            // A code of this length is `first_code + k` for k < count.
            let k = code.wrapping_sub(c.first_code[len]);
            if code >= c.first_code[len] && k < u32::from(c.count[len]) {
                let symbol = c.symbols[usize::from(c.offset[len]) + k as usize];
                if symbol == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Only EOS is 30 bits of ones; every 30-bit code is a symbol.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // What is left must be a prefix of EOS (all ones) shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

/// Length in octets of `input` once Huffman-coded.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input
        .iter()
        .map(|&b| usize::from(CODE_LENGTHS[usize::from(b)]))
        .sum();
    bits.div_ceil(8)
}

/// Huffman-codes `input`, appending to `out` (padded with the EOS prefix).
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in input {
        let len = u32::from(CODE_LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(CANON.codes[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1u64 << pad) - 1)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_rfc_table() {
        // Spot checks against RFC 7541 Appendix B: (symbol, code, length).
        let table: &[(usize, u32, u8)] = &[
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (10, 0x3ffffffc, 30),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b't' as usize, 0x9, 5),
            (b'A' as usize, 0x21, 6),
            (b'z' as usize, 0x7b, 7),
            (b'<' as usize, 0x7ffc, 15),
            (b'~' as usize, 0x1ffd, 13),
            (127, 0xffffffc, 28),
            (128, 0xfffe6, 20),
            (200, 0x3ffffe2, 26),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ];
        for &(sym, code, len) in table {
            assert_eq!(CANON.codes[sym], code, "code of symbol {sym}");
            assert_eq!(CODE_LENGTHS[sym], len, "length of symbol {sym}");
        }
        // Kraft equality: a complete prefix code.
        let sum: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1u64 << 30);
    }

    #[test]
    fn round_trip_every_octet() {
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = Vec::new();
        encode(&all, &mut enc);
        assert_eq!(enc.len(), encoded_len(&all));
        let mut dec = Vec::new();
        decode(&enc, &mut dec).unwrap();
        assert_eq!(dec, all);
    }

    #[test]
    fn rfc_examples() {
        // RFC 7541 C.4.1: "www.example.com".
        let mut out = Vec::new();
        decode(
            &[
                0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"www.example.com");
        let mut enc = Vec::new();
        encode(b"no-cache", &mut enc);
        assert_eq!(enc, [0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]);
    }

    #[test]
    fn bad_padding_and_eos() {
        let mut out = Vec::new();
        // A full byte of ones is padding longer than 7 bits.
        assert_eq!(decode(&[0xff], &mut out), Err(HuffmanError::Padding));
        // '0' (00000) then padding of zeros.
        assert_eq!(decode(&[0x00], &mut out), Err(HuffmanError::Padding));
        // EOS itself (30 ones) then 2 bits of padding.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Eos)
        );
        // Empty input is the empty string.
        out.clear();
        assert_eq!(decode(&[], &mut out), Ok(()));
        assert!(out.is_empty());
        // '0' then 3 bits of ones.
        assert_eq!(decode(&[0x07], &mut out), Ok(()));
        assert_eq!(out, b"0");
    }
}
