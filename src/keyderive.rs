//! The transformations `stale_cache_redis_variable` applies to derive a Redis key: `escape`,
//! `unescape` and `md5`, the jobs set-misc's `set_escape_uri`, `set_unescape_uri` and
//! `set_md5` did in the documented configuration. The Redis key must come out byte for byte
//! as set-misc derived it, so an operator switching configurations keeps the cache; the
//! integration test t/046-redis-key.t compares both on the same inputs.
//!
//! Pure functions, no nginx symbols (unit-tested with `cargo test`).

/// One step of a derivation, applied left to right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Percent-encodes every byte but `A-Z a-z 0-9 - _ . ~` (what the module itself sends
    /// as `?key=`, see `replay::key_argument`), so `unescape` gives back the exact bytes.
    Escape,
    /// Decodes `%XX` and `+` (a space) as set-misc's `set_unescape_uri` does: nginx's
    /// `ngx_unescape_uri` rules for a `%` not followed by two hex digits, plus `+`.
    Unescape,
    /// The lowercase hex MD5 digest (32 bytes), as `set_md5`.
    Md5,
    /// Wraps the value in `{` `}`: a Redis Cluster hash tag, so keys built from it (the
    /// entry `{md5}` and its lease `{md5}:lease`) hash to one slot.
    Tag,
}

impl Transform {
    pub fn parse(name: &[u8]) -> Option<Self> {
        match name {
            b"escape" => Some(Transform::Escape),
            b"unescape" => Some(Transform::Unescape),
            b"md5" => Some(Transform::Md5),
            b"tag" => Some(Transform::Tag),
            _ => None,
        }
    }

    pub fn apply(self, input: &[u8]) -> Vec<u8> {
        match self {
            Transform::Escape => escape(input),
            Transform::Unescape => unescape(input),
            Transform::Md5 => md5_hex(input).to_vec(),
            Transform::Tag => [b"{".as_slice(), input, b"}"].concat(),
        }
    }
}

/// Applies `steps` in order.
pub fn derive(input: &[u8], steps: &[Transform]) -> Vec<u8> {
    let mut value = input.to_vec();
    for step in steps {
        value = step.apply(&value);
    }
    value
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

pub fn escape(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3);
    for &b in input {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'%',
                HEX_UPPER[usize::from(b >> 4)],
                HEX_UPPER[usize::from(b & 15)],
            ]);
        }
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// set-misc's `set_unescape_uri`, checked against it byte for byte: nginx's state machine
/// (`%` starts a quoted byte; an invalid first digit is kept but the `%` is not; an invalid
/// second digit drops all three characters) and `+` outside a `%` sequence is a space.
pub fn unescape(input: &[u8]) -> Vec<u8> {
    enum State {
        Usual,
        Quoted,
        QuotedSecond(u8),
    }
    let mut out = Vec::with_capacity(input.len());
    let mut state = State::Usual;
    for &c in input {
        state = match state {
            State::Usual if c == b'%' => State::Quoted,
            State::Usual if c == b'+' => {
                out.push(b' ');
                State::Usual
            }
            State::Usual => {
                out.push(c);
                State::Usual
            }
            State::Quoted => match hex_value(c) {
                Some(high) => State::QuotedSecond(high),
                None => {
                    out.push(c);
                    State::Usual
                }
            },
            State::QuotedSecond(high) => {
                if let Some(low) = hex_value(c) {
                    out.push(high << 4 | low);
                }
                State::Usual
            }
        };
    }
    out
}

/// RFC 1321 MD5 of `input`, as 32 lowercase hex digits.
pub fn md5_hex(input: &[u8]) -> [u8; 32] {
    let digest = md5(input);
    let mut out = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX_LOWER[usize::from(b >> 4)];
        out[2 * i + 1] = HEX_LOWER[usize::from(b & 15)];
    }
    out
}

/// Per-round shift amounts of RFC 1321.
const SHIFTS: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9,
    14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15,
    21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// The sine-derived constants of RFC 1321: floor(abs(sin(i + 1)) * 2^32).
fn sine_table() -> [u32; 64] {
    let mut k = [0u32; 64];
    for (i, slot) in k.iter_mut().enumerate() {
        *slot = ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32;
    }
    k
}

pub fn md5(input: &[u8]) -> [u8; 16] {
    thread_local! {
        static K: [u32; 64] = sine_table();
    }
    let k = K.with(|k| *k);
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

    let mut message = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_le_bytes());

    for block in message.chunks_exact(64) {
        let mut m = [0u32; 16];
        for (i, word) in block.chunks_exact(4).enumerate() {
            m[i] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let rotated = a
                .wrapping_add(f)
                .wrapping_add(k[i])
                .wrapping_add(m[g])
                .rotate_left(SHIFTS[i]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(rotated);
        }
        state[0] = state[0].wrapping_add(a);
        state[1] = state[1].wrapping_add(b);
        state[2] = state[2].wrapping_add(c);
        state[3] = state[3].wrapping_add(d);
    }

    let mut out = [0u8; 16];
    for (i, word) in state.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(input: &[u8]) -> String {
        String::from_utf8(md5_hex(input).to_vec()).unwrap()
    }

    #[test]
    fn md5_matches_rfc_1321_test_suite() {
        assert_eq!(hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(b"a"), "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(b"message digest"), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(
            hex(b"abcdefghijklmnopqrstuvwxyz"),
            "c3fcd3d76192e4007dfb496cca67e13b"
        );
        assert_eq!(
            hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn md5_across_block_boundaries() {
        // Lengths around the 56/64-byte padding edges, against md5sum.
        let cases: [(usize, &str); 6] = [
            (55, "04364420e25c512fd958a70738aa8f72"),
            (56, "668a72d5ba17f08e62dabcafad6db14b"),
            (63, "7dc2ca208106a2f703567bdff99d8981"),
            (64, "c1bb4f81d892b2d57947682aeb252456"),
            (65, "1bc932052302d074bdec39795fe00cf6"),
            (119, "ab347a5f68c8a443cfcddc633f12c24f"),
        ];
        for (n, expected) in cases {
            assert_eq!(hex(&vec![b'x'; n]), expected, "length {n}");
        }
    }

    #[test]
    fn escape_then_unescape_gives_every_byte_back() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(unescape(&escape(&all)), all);
        let mut prefixed = b"key=".to_vec();
        prefixed.extend_from_slice(&escape(&all));
        assert_eq!(prefixed, crate::replay::key_argument(&all));
    }

    #[test]
    fn unescape_follows_nginx_on_broken_sequences() {
        assert_eq!(unescape(b"a%41b"), b"aAb");
        assert_eq!(unescape(b"%7e%7E"), b"~~");
        assert_eq!(unescape(b"a+b"), b"a b");
        assert_eq!(unescape(b"%+x"), b"+x");
        assert_eq!(unescape(b"%4+y"), b"y");
        assert_eq!(unescape(b"%%41"), b"%41");
        assert_eq!(unescape(b"%zz"), b"zz");
        assert_eq!(unescape(b"%4z."), b".");
        assert_eq!(unescape(b"end%"), b"end");
        assert_eq!(unescape(b"end%4"), b"end");
    }

    #[test]
    fn derive_applies_steps_in_order() {
        let steps = [Transform::Unescape, Transform::Md5];
        assert_eq!(
            derive(b"Mozilla%7C%2Fapi", &steps),
            md5_hex(b"Mozilla|/api")
        );
        assert_eq!(derive(b"x", &[]), b"x");
        assert_eq!(Transform::parse(b"md5"), Some(Transform::Md5));
        assert_eq!(Transform::parse(b"sha1"), None);
        // A hash tag around the digest: `{md5}`.
        let tagged = derive(b"k", &[Transform::Md5, Transform::Tag]);
        assert_eq!(tagged, [b"{".as_slice(), &md5_hex(b"k"), b"}"].concat());
        assert_eq!(Transform::parse(b"tag"), Some(Transform::Tag));
    }
}
