//! What the fuzz targets share: the module's RESP code, compiled from its own source
//! file (it has no nginx symbols, so the nginx-sys build is not needed), an independent
//! reference reader to compare it with, and a way to cut a stream into reads.

#[allow(dead_code)]
#[path = "../../src/resp.rs"]
pub mod resp;

pub mod reference;

/// The pure Redis Cluster code (slot, redirections, slot map), from its own source file.
#[allow(dead_code)]
#[path = "../../src/cluster.rs"]
pub mod cluster;

/// Cuts `data` into reads whose sizes cycle through `pattern` (0 is an empty read),
/// so the fuzzer also explores how a reply stream arrives. An empty pattern gives
/// one read.
pub fn split<'a>(data: &'a [u8], pattern: &[u8]) -> Vec<&'a [u8]> {
    if pattern.is_empty() {
        return vec![data];
    }
    let mut pieces = Vec::new();
    let mut rest = data;
    // Bounded even for an all-zero pattern.
    for &size in pattern.iter().cycle().take(2 * data.len() + 2) {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(usize::from(size).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// Splits a fuzz input into a read-size pattern (length from the low 3 bits of the
/// first byte) and the stream; the remaining bits of the first byte are returned
/// for the target's own use.
pub fn pattern_and_stream(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&first, rest) = data.split_first()?;
    let n = usize::from(first & 7).min(rest.len());
    let (pattern, stream) = rest.split_at(n);
    Some((first >> 3, pattern, stream))
}
