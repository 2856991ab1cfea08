//! Random values: the one place the module asks for them (table fingerprint seeds, the
//! refresh secret, lease tokens), so every caller gets the same source and the same fallback.

/// Fills `bytes` from the kernel's random source (getrandom, else /dev/urandom). If neither
/// answers (a seccomp filter, no /dev), a hash of the pid and time through std's
/// `RandomState`, itself seeded by the OS once per process: still different per start and
/// not guessable from outside, which is what every caller needs (none needs key material).
pub fn fill(bytes: &mut [u8]) {
    if from_kernel(bytes) {
        return;
    }
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(nanos);
        h.write_usize(i);
        let word = h.finish().to_ne_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// A random `u64` (see [`fill`]).
pub fn u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    u64::from_ne_bytes(bytes)
}

fn from_kernel(bytes: &mut [u8]) -> bool {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &mut bytes[done..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            done += n as usize;
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            break;
        }
    }
    if done == bytes.len() {
        return true;
    }
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(bytes))
        .is_ok()
}
