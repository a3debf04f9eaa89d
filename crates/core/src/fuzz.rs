//! A seeded, structure-aware mutator for fuzzing the parsers of outside input (test support;
//! stable toolchain, no fuzzing engine). Mutations keep most of a valid file and break it
//! where formats are fragile: header integers set to edge values, lengths that lie,
//! truncations, duplicated or deleted spans, flipped bits.

use crate::rng::Rng;

/// Integers that break size arithmetic: zero, one, sign and width boundaries.
const EDGES: [u64; 10] = [0, 1, 2, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// A mutated copy of `seed`: 1 to 4 mutations, drawn from `rng`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut b, rng);
    }
    b
}

fn mutate_once(b: &mut Vec<u8>, rng: &mut Rng) {
    let n = b.len();
    let at = |rng: &mut Rng| if n == 0 { 0 } else { rng.below(n) };
    match rng.below(9) {
        // flip one bit
        0 if n > 0 => {
            let i = at(rng);
            b[i] ^= 1 << rng.below(8);
        }
        // a random byte
        1 if n > 0 => {
            let i = at(rng);
            b[i] = rng.below(256) as u8;
        }
        // an edge integer, 1, 2, 4 or 8 bytes wide, either endianness, where headers live
        // (mostly the first 64 bytes) or anywhere
        2 | 3 if n > 0 => {
            let width = [1, 2, 4, 8][rng.below(4)];
            let v = EDGES[rng.below(EDGES.len())].wrapping_add(rng.below(3) as u64).wrapping_sub(1);
            let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
            let bytes = if bytes[0] == 0 && width < 8 { &bytes[8 - width..] } else { &bytes[..width] };
            let i = if rng.below(3) > 0 { rng.below(n.min(64)) } else { at(rng) };
            for (k, &x) in bytes.iter().enumerate() {
                if i + k < n {
                    b[i + k] = x;
                }
            }
        }
        // truncate
        4 => b.truncate(at(rng)),
        // delete a span
        5 if n > 1 => {
            let i = at(rng);
            let len = 1 + rng.below((n - i).min(64));
            b.drain(i..i + len);
        }
        // duplicate a span in place
        6 if n > 1 => {
            let i = at(rng);
            let len = 1 + rng.below((n - i).min(256));
            let span: Vec<u8> = b[i..i + len].to_vec();
            let j = at(rng);
            b.splice(j..j, span);
        }
        // insert random bytes
        7 => {
            let j = at(rng);
            let ins: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.below(256) as u8).collect();
            b.splice(j..j, ins);
        }
        // replace a run with one repeated byte (zeros or 0xff: "lengths" of a file's padding)
        _ if n > 0 => {
            let i = at(rng);
            let len = 1 + rng.below((n - i).min(32));
            let v = if rng.below(2) == 0 { 0 } else { 0xff };
            b[i..i + len].fill(v);
        }
        _ => b.push(rng.below(256) as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_seeded_and_change_the_input() {
        let seed: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        let mut changed = 0;
        for _ in 0..1000 {
            let x = mutate(&seed, &mut a);
            assert_eq!(x, mutate(&seed, &mut b));
            changed += (x != seed) as usize;
        }
        assert!(changed > 950, "{changed} of 1000 mutations changed the input");
        // empty input never panics
        for _ in 0..100 {
            mutate(&[], &mut a);
        }
    }
}
