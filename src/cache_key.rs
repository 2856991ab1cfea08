//! A request's cache key as its settings hold it: on the heap, or (on the nginx side) in
//! the request's pool, where a fresh hit's copy costs no malloc and no free (the pool is
//! freed whole when the request ends).

use core::fmt;
use core::ops::Deref;
use core::ptr::NonNull;

/// A cache key; reads as `&[u8]`.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Heap(Box<[u8]>),
    /// Bytes someone else keeps (a request's pool) for as long as the key lives.
    Kept {
        at: NonNull<u8>,
        len: usize,
    },
}

impl Key {
    /// A copy of `bytes`, on the heap.
    pub fn new(bytes: &[u8]) -> Key {
        Key(Repr::Heap(bytes.into()))
    }

    /// The key `bytes`, not copied.
    ///
    /// # Safety
    /// `bytes` must stay valid and unchanged for as long as the key and its clones live (a
    /// request's pool: the key lives in the request's state, dropped before the pool is
    /// freed; whatever outlives the request copies the bytes with `to_vec`).
    pub unsafe fn kept(bytes: &[u8]) -> Key {
        Key(Repr::Kept {
            at: NonNull::from(bytes).cast(),
            len: bytes.len(),
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Heap(bytes) => bytes,
            // SAFETY: (`kept`'s caller) the bytes outlive the key.
            Repr::Kept { at, len } => unsafe { core::slice::from_raw_parts(at.as_ptr(), *len) },
        }
    }
}

impl Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_slice().escape_ascii())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialEq<[u8]> for Key {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for Key {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Key {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<Vec<u8>> for Key {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_given() {
        for len in [0, 1, 110, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let key = Key::new(&bytes);
            assert_eq!(key.as_slice(), &bytes[..], "len {len}");
            assert_eq!(key.clone(), key);
            assert_eq!(key, bytes);
            // SAFETY (test): `bytes` outlives `kept`.
            let kept = unsafe { Key::kept(&bytes) };
            assert_eq!(kept, key);
            assert_eq!(kept.as_slice().as_ptr(), bytes.as_ptr());
        }
        assert_ne!(Key::new(b"a"), Key::new(b"a\0"));
        assert_eq!(core::mem::size_of::<Key>(), 24);
    }
}
