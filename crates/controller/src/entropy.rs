//! Random values the controller hands out: shared secrets of resources and their
//! initial generations, read from the kernel (`/dev/urandom`; no crate needed).

use std::io::Read;

/// Length of a generated shared secret (LINSTOR's length).
pub const SECRET_LEN: usize = 20;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// 20 letters and digits, uniformly chosen.
pub fn secret() -> std::io::Result<String> {
    let mut out = String::with_capacity(SECRET_LEN);
    // 248 = 4 * 62: bytes at or above it are dropped so every letter is equally likely.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    while out.len() < SECRET_LEN {
        let mut buf = [0u8; 32];
        fill(&mut buf)?;
        for b in buf.into_iter().filter(|&b| b < limit) {
            if out.len() < SECRET_LEN {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

/// A random generation, not zero, as 16 hex digits.
pub fn generation() -> std::io::Result<String> {
    loop {
        let mut buf = [0u8; 8];
        fill(&mut buf)?;
        let g = u64::from_le_bytes(buf);
        if g != 0 {
            return Ok(format!("{g:016x}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let a = secret().unwrap();
        let b = secret().unwrap();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
        let g = generation().unwrap();
        assert_eq!(g.len(), 16);
        assert!(model::options::parse_generation("k", &g).is_ok());
    }
}
