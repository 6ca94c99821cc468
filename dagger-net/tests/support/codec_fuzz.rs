//! Checks of the frame decoder against untrusted bytes, shared by `tests/fuzz_codec.rs`
//! (a fixed number of generated inputs on stable Rust) and the cargo-fuzz target
//! `frame_decoder` (coverage-guided, on nightly). Everything is driven by an
//! [`Unstructured`], so both feed the same code.

#![allow(dead_code)]

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use dagger_net::codec::{CodecError, Decoded, Decoder, Encoder, Header, MAX_CLOSE_REASON};

/// The most bytes a decoder reserves for a frame before its bytes arrive (the codec's
/// documented read-ahead).
pub const RESERVE: usize = 1 << 20;

/// How a decoder is set up.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// The frame limit.
    pub max_frame: usize,
    /// The limit on the first data frame, if any.
    pub first_limit: Option<usize>,
    /// Whether striped frames are accepted.
    pub striped: bool,
}

impl Setup {
    /// A setup chosen by `u`: small limits (so that limits are hit) and large ones (so
    /// that announced lengths are not refused on the header alone).
    pub fn arbitrary(u: &mut Unstructured<'_>) -> Result<Self> {
        let max_frame = match u.int_in_range(0..=3u8)? {
            0 => u.int_in_range(0..=64)?,
            1 => u.int_in_range(0..=4096)?,
            2 => 1 << 30,
            _ => usize::MAX >> 2,
        };
        let first_limit = if u.arbitrary()? {
            Some(u.int_in_range(0..=128)?)
        } else {
            None
        };
        Ok(Setup {
            max_frame,
            first_limit,
            striped: u.arbitrary()?,
        })
    }

    fn decoder(self) -> Decoder {
        let d = Decoder::new(self.max_frame).allow_striped(self.striped);
        match self.first_limit {
            Some(l) => d.with_first_frame_limit(l),
            None => d,
        }
    }
}

/// What decoding a whole stream gave.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The items, in order.
    pub items: Vec<Decoded>,
    /// The error that ended the stream, if one did.
    pub error: Option<CodecError>,
}

/// Decodes `stream` fed in pieces ending at `cuts` (taken modulo the stream's length),
/// checking each item against the limits in force and that every call makes progress.
/// Panics on a violation.
pub fn decode(setup: Setup, stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut dec = setup.decoder();
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    ends.push(stream.len());
    ends.sort_unstable();
    let mut items = Vec::new();
    let mut first_data = true;
    let mut start = 0;
    let mut payload = 0usize;
    for end in ends {
        let mut piece = &stream[start..end];
        start = end;
        loop {
            let before = piece.len();
            let item = match dec.decode(&mut piece) {
                Ok(Some(item)) => item,
                Ok(None) => {
                    assert!(piece.is_empty(), "decoder stopped with input left");
                    break;
                }
                Err(error) => {
                    return Outcome {
                        items,
                        error: Some(error),
                    }
                }
            };
            // An item is yielded by the call that brings its last byte.
            assert!(before > piece.len(), "an item without progress");
            let limit = match (first_data, setup.first_limit) {
                (true, Some(l)) => l.min(setup.max_frame),
                _ => setup.max_frame,
            };
            match &item {
                Decoded::Frame(f) => {
                    assert!(f.len() <= limit, "frame of {} over {limit}", f.len());
                    payload += f.len();
                    first_data = false;
                }
                Decoded::Striped { len } => {
                    assert!(setup.striped, "striped frame on a decoder without lanes");
                    assert!(*len <= limit, "striped frame of {len} over {limit}");
                    assert!(dec.is_idle());
                    first_data = false;
                }
                Decoded::Close(reason) => {
                    // Each invalid byte may become a 3-byte replacement character.
                    assert!(reason.len() <= 3 * MAX_CLOSE_REASON);
                }
            }
            assert!(payload <= stream.len());
            items.push(item);
        }
    }
    Outcome { items, error: None }
}

/// Decodes `stream` in pieces and checks that the result does not depend on where the
/// pieces are cut.
pub fn check_split_invariance(setup: Setup, stream: &[u8], cuts: &[usize]) {
    let whole = decode(setup, stream, &[]);
    let cut = decode(setup, stream, cuts);
    assert_eq!(whole, cut, "decoding depends on how the bytes are cut");
}

/// A valid stream built with the encoder from `u` (data frames, closes, striped headers
/// with their first part), and the offsets of its headers.
pub fn valid_stream(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut enc = Encoder::new();
    let mut headers = Vec::new();
    let mut at = 0usize;
    let n = u.int_in_range(0..=8)?;
    for _ in 0..n {
        headers.push(at);
        match u.int_in_range(0..=5u8)? {
            0..=3 => {
                let len = u.int_in_range(0..=48)?;
                let frame = u.bytes(len)?.to_vec();
                at += 8 + frame.len();
                enc.push_frame(frame);
            }
            4 => {
                let len = u.int_in_range(0..=32)?;
                let first = u.bytes(len)?.to_vec();
                let whole = first.len() + u.int_in_range(0..=64)?;
                at += 8 + first.len();
                enc.push_striped(whole, Bytes::from(first));
            }
            _ => {
                let reason: String = u.arbitrary()?;
                let before = enc.queued();
                enc.push_close(&reason);
                at += enc.queued() - before;
            }
        }
    }
    let stream = enc.take().iter().flat_map(|c| c.iter().copied()).collect();
    Ok((stream, headers))
}

/// Damages `stream` in a few ways chosen by `u`: bit flips, truncation, headers rewritten
/// with other lengths or flags, bytes inserted, removed or repeated.
pub fn mutate(u: &mut Unstructured<'_>, stream: &mut Vec<u8>, headers: &[usize]) -> Result<()> {
    let rounds = u.int_in_range(1..=4)?;
    for _ in 0..rounds {
        match u.int_in_range(0..=6u8)? {
            0 if !stream.is_empty() => {
                let i = u.choose_index(stream.len())?;
                stream[i] ^= 1 << u.int_in_range(0..=7)?;
            }
            1 => {
                let n = u.int_in_range(0..=stream.len())?;
                stream.truncate(n);
            }
            2 if !headers.is_empty() => {
                let at = *u.choose(headers)?;
                let word: u64 = match u.int_in_range(0..=5u8)? {
                    0 => u.arbitrary()?,
                    1 => u64::MAX,
                    2 => (1 << 62) - 1,
                    3 => u.int_in_range(0..=4200)?,
                    4 => u.int_in_range(0..=4200u64)? | 1 << 62,
                    _ => u.int_in_range(0..=4200u64)? | 1 << 63,
                };
                if at + 8 <= stream.len() {
                    stream[at..at + 8].copy_from_slice(&word.to_le_bytes());
                }
            }
            3 => {
                let i = u.int_in_range(0..=stream.len())?;
                let len = u.int_in_range(0..=16)?;
                let ins = u.bytes(len)?.to_vec();
                stream.splice(i..i, ins);
            }
            4 if !stream.is_empty() => {
                let i = u.choose_index(stream.len())?;
                let n = u.int_in_range(0..=stream.len() - i)?;
                stream.drain(i..i + n);
            }
            5 if !stream.is_empty() => {
                let i = u.choose_index(stream.len())?;
                let n = u.int_in_range(0..=(stream.len() - i).min(64))?;
                let dup = stream[i..i + n].to_vec();
                stream.splice(i..i, dup);
            }
            _ => {
                // A valid header of a length near a limit, at a header's place.
                let len = *u.choose(&[0u64, 1, 64, 65, 128, 129, 4096, 4097, 1 << 30])?;
                let h = match u.int_in_range(0..=2u8)? {
                    0 => Header::Data { len },
                    1 => Header::Close { len },
                    _ => Header::Striped { len },
                };
                let at = headers.first().copied().unwrap_or(0).min(stream.len());
                stream.splice(at..at, h.encode());
            }
        }
    }
    Ok(())
}

/// One fuzz case: a setup, a stream (raw bytes, or a valid stream damaged) and cuts, all
/// from `u`. Checks the items against the limits and that cutting does not matter.
pub fn check(u: &mut Unstructured<'_>) -> Result<()> {
    let setup = Setup::arbitrary(u)?;
    let stream = if u.arbitrary()? {
        let (mut stream, headers) = valid_stream(u)?;
        if u.ratio(7, 8)? {
            mutate(u, &mut stream, &headers)?;
        }
        stream
    } else {
        let len = u.int_in_range(0..=256)?;
        u.bytes(len)?.to_vec()
    };
    let cuts: Vec<usize> = u.arbitrary()?;
    check_split_invariance(setup, &stream, &cuts);
    Ok(())
}
