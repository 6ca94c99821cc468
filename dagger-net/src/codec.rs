//! The framing of a link's byte stream, without I/O.
//!
//! A stream is a sequence of frames, each an 8-byte little-endian header followed by its
//! payload. The header's low 62 bits are the payload's length; bit 63 marks a *close*
//! whose payload is the UTF-8 reason (at most [`MAX_CLOSE_REASON`] bytes), after which the
//! sender ends the stream; bit 62 marks a *striped* frame whose payload is split over
//! several streams (only the QUIC transport stripes; see its `lanes` module).
//!
//! [`Encoder`] turns frames into write batches (small frames are copied into one buffer,
//! large ones are kept as separate chunks, so a batch is written with one vectored
//! write). [`Decoder`] is fed whatever bytes arrived and yields whole frames, enforcing
//! the frame limit on the header, before the payload is buffered. Both operate on
//! buffers only, so they are tested without sockets and reusable by any byte-stream
//! transport (the Unix-socket transport outside this crate uses them).

use crate::{Frame, NetError};
use bytes::Bytes;

/// The length of a frame header.
pub const HEADER_LEN: usize = 8;
/// The longest close reason sent or accepted.
pub const MAX_CLOSE_REASON: usize = 4096;
/// Marks a close frame in a header.
const CLOSE_BIT: u64 = 1 << 63;
/// Marks a striped frame in a header.
const STRIPE_BIT: u64 = 1 << 62;
/// The largest length a header can carry.
pub const MAX_HEADER_LEN: u64 = STRIPE_BIT - 1;
/// Frames up to this size are copied into the encoder's coalescing buffer; larger ones are
/// kept as their own chunk, without a copy.
pub const COPY_LIMIT: usize = 16 * 1024;
/// The most bytes of a frame's payload reserved before they arrive: a header alone never
/// makes the receiver allocate more than this. Once that much of a larger frame has
/// arrived, the rest of it is reserved at once (one move of what arrived, rather than a
/// copy at every doubling).
const INITIAL_RESERVE: usize = 1 << 20;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// An ordinary frame of `len` bytes.
    Data {
        /// The payload's length.
        len: u64,
    },
    /// A close whose reason of `len` bytes follows.
    Close {
        /// The reason's length.
        len: u64,
    },
    /// A frame of `len` bytes striped over the link's streams.
    Striped {
        /// The whole frame's length.
        len: u64,
    },
}

impl Header {
    /// The 8 bytes of this header. Lengths above [`MAX_HEADER_LEN`] are not representable;
    /// callers never produce them (frames are limited far below).
    pub fn encode(self) -> [u8; HEADER_LEN] {
        let word = match self {
            Header::Data { len } => len & MAX_HEADER_LEN,
            Header::Close { len } => CLOSE_BIT | (len & MAX_HEADER_LEN),
            Header::Striped { len } => STRIPE_BIT | (len & MAX_HEADER_LEN),
        };
        word.to_le_bytes()
    }

    /// Parses 8 header bytes. Fails only for a header with both the close and the stripe
    /// bit set.
    pub fn decode(bytes: [u8; HEADER_LEN]) -> Result<Header, CodecError> {
        let word = u64::from_le_bytes(bytes);
        let len = word & MAX_HEADER_LEN;
        match (word & CLOSE_BIT != 0, word & STRIPE_BIT != 0) {
            (false, false) => Ok(Header::Data { len }),
            (true, false) => Ok(Header::Close { len }),
            (false, true) => Ok(Header::Striped { len }),
            (true, true) => Err(CodecError::StripedClose),
        }
    }
}

/// Why a byte stream is not a valid sequence of frames. Each ends the link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A header announced a frame longer than the limit in force (the frame limit, or
    /// the smaller limit on the first frame of an accepted link).
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A close header announced a reason longer than [`MAX_CLOSE_REASON`].
    #[error("close reason of {len} bytes exceeds {MAX_CLOSE_REASON} bytes")]
    CloseReasonTooLong {
        /// The announced length.
        len: u64,
    },
    /// A header had both the close and the stripe bit.
    #[error("a close frame cannot be striped")]
    StripedClose,
    /// A striped frame arrived on a stream that does not allow them.
    #[error("striped frame on a link without lanes")]
    StripedNotAllowed,
}

impl CodecError {
    /// The transport error for this violation by `peer`: [`NetError::FrameTooLarge`] for
    /// an oversized frame, [`NetError::Protocol`] otherwise.
    pub fn into_net_error(self, peer: &str) -> NetError {
        match self {
            CodecError::FrameTooLarge { len, limit } => NetError::FrameTooLarge { len, limit },
            other => NetError::Protocol {
                peer: peer.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

/// What a [`Decoder`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame.
    Frame(Frame),
    /// The peer closed the link with this reason (invalid UTF-8 replaced); nothing follows.
    Close(String),
    /// The header of a striped frame of `len` bytes (already checked against the limits):
    /// its first part is the next bytes of this stream, the other parts arrive on the
    /// link's other streams. The decoder is between frames again.
    Striped {
        /// The whole frame's length.
        len: usize,
    },
}

/// The frame being received.
#[derive(Debug)]
struct Body {
    bytes: Vec<u8>,
    len: usize,
    close: bool,
}

/// Parses frames out of a byte stream fed in pieces of any size.
///
/// Every limit is checked on the header, before any of the payload is buffered, and at
/// most 1 MiB of the payload is reserved ahead, so a peer announcing a huge frame costs
/// little until it sends the bytes. Once 1 MiB of it arrived, the rest is reserved in
/// one step: a large frame is moved once, not copied at every doubling of its buffer.
#[derive(Debug)]
pub struct Decoder {
    max_frame: usize,
    first_limit: Option<usize>,
    allow_striped: bool,
    header: [u8; HEADER_LEN],
    header_len: usize,
    body: Option<Body>,
}

impl Decoder {
    /// A decoder accepting frames of at most `max_frame` bytes, and no striped frames.
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            max_frame,
            first_limit: None,
            allow_striped: false,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: None,
        }
    }

    /// Limits the first data frame to `limit` bytes (when smaller than the frame limit).
    /// Listeners use it for the peer's hello, so that a peer that has not yet said who it
    /// is cannot make them buffer a large frame.
    pub fn with_first_frame_limit(mut self, limit: usize) -> Self {
        self.first_limit = Some(limit.min(self.max_frame));
        self
    }

    /// Accepts striped frames (the stream is the primary of a link with lanes).
    pub fn allow_striped(mut self, allow: bool) -> Self {
        self.allow_striped = allow;
        self
    }

    /// Whether the decoder is between frames (no partial header or payload held).
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.body.is_none()
    }

    /// The limit on the next data frame.
    fn limit(&self) -> usize {
        self.first_limit.unwrap_or(self.max_frame)
    }

    /// Consumes bytes from the front of `input` until one item is complete, and returns
    /// it; returns `Ok(None)` once `input` is exhausted without completing one (the
    /// partial frame is kept for the next call). After an error the stream is invalid and
    /// the decoder must not be used again.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Decoded>, CodecError> {
        loop {
            let Some(body) = self.body.as_mut() else {
                let n = (HEADER_LEN - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                *input = &input[n..];
                self.header_len += n;
                if self.header_len < HEADER_LEN {
                    return Ok(None);
                }
                self.header_len = 0;
                if let Some(striped) = self.start(Header::decode(self.header)?)? {
                    return Ok(Some(striped));
                }
                continue;
            };
            let n = (body.len - body.bytes.len()).min(input.len());
            if body.bytes.len() + n > body.bytes.capacity() {
                // More than the initial reserve (1 MiB) of it has arrived: the rest.
                body.bytes.reserve_exact(body.len - body.bytes.len());
            }
            body.bytes.extend_from_slice(&input[..n]);
            *input = &input[n..];
            if body.bytes.len() < body.len {
                return Ok(None);
            }
            let Some(Body { bytes, close, .. }) = self.body.take() else {
                continue;
            };
            return Ok(Some(if close {
                Decoded::Close(String::from_utf8_lossy(&bytes).into_owned())
            } else {
                Decoded::Frame(bytes)
            }));
        }
    }

    /// Checks a header against the limits and prepares its body; returns the item to
    /// yield at once for a striped header.
    fn start(&mut self, header: Header) -> Result<Option<Decoded>, CodecError> {
        let (len, close) = match header {
            Header::Close { len } => {
                if len > MAX_CLOSE_REASON as u64 {
                    return Err(CodecError::CloseReasonTooLong { len });
                }
                (len, true)
            }
            Header::Data { len } | Header::Striped { len } => {
                let limit = self.limit();
                if len > limit as u64 {
                    return Err(CodecError::FrameTooLarge {
                        len,
                        limit: limit as u64,
                    });
                }
                if matches!(header, Header::Striped { .. }) && !self.allow_striped {
                    return Err(CodecError::StripedNotAllowed);
                }
                self.first_limit = None;
                (len, false)
            }
        };
        // `len` is at most a limit, which is a usize.
        let len = len as usize;
        if matches!(header, Header::Striped { .. }) {
            return Ok(Some(Decoded::Striped { len }));
        }
        self.body = Some(Body {
            bytes: Vec::with_capacity(len.min(INITIAL_RESERVE)),
            len,
            close,
        });
        Ok(None)
    }
}

/// Builds write batches: headers and small frames are copied into one buffer, frames over
/// [`COPY_LIMIT`] become chunks of their own (no copy).
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
    chunks: Vec<Bytes>,
    queued: usize,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many bytes are queued (headers included).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queues a data frame.
    pub fn push_frame(&mut self, frame: Frame) {
        self.queued += HEADER_LEN + frame.len();
        self.buf.extend_from_slice(
            &Header::Data {
                len: frame.len() as u64,
            }
            .encode(),
        );
        if frame.len() <= COPY_LIMIT {
            self.buf.extend_from_slice(&frame);
        } else {
            self.flush_buf();
            self.chunks.push(Bytes::from(frame));
        }
    }

    /// Queues a data frame made of `head` followed by `tail`; `tail` is written from
    /// where it lies unless it is short enough to be coalesced.
    pub fn push_parts(&mut self, head: Frame, tail: Bytes) {
        let len = head.len() + tail.len();
        self.queued += HEADER_LEN + len;
        self.buf
            .extend_from_slice(&Header::Data { len: len as u64 }.encode());
        self.buf.extend_from_slice(&head);
        if tail.len() <= COPY_LIMIT {
            self.buf.extend_from_slice(&tail);
        } else {
            self.flush_buf();
            self.chunks.push(tail);
        }
    }

    /// Queues a close with `reason`, cut to [`MAX_CLOSE_REASON`] bytes on a character
    /// boundary.
    pub fn push_close(&mut self, reason: &str) {
        let mut end = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.queued += HEADER_LEN + end;
        self.buf
            .extend_from_slice(&Header::Close { len: end as u64 }.encode());
        self.buf.extend_from_slice(&reason.as_bytes()[..end]);
    }

    /// Queues the header of a striped frame of `len` bytes followed by its first part.
    pub fn push_striped(&mut self, len: usize, first_part: Bytes) {
        self.queued += HEADER_LEN + first_part.len();
        self.buf
            .extend_from_slice(&Header::Striped { len: len as u64 }.encode());
        self.flush_buf();
        self.chunks.push(first_part);
    }

    /// Moves the coalescing buffer into the chunk list.
    fn flush_buf(&mut self) {
        if !self.buf.is_empty() {
            self.chunks.push(Bytes::from(std::mem::take(&mut self.buf)));
        }
    }

    /// Everything queued, in order, as chunks to write; the encoder is left empty (its
    /// chunk list keeps its capacity: hand it back with [`Encoder::reuse`]).
    pub fn take(&mut self) -> Vec<Bytes> {
        self.flush_buf();
        self.queued = 0;
        std::mem::take(&mut self.chunks)
    }

    /// Gives back a chunk list returned by [`Encoder::take`] once written, to reuse its
    /// allocation.
    pub fn reuse(&mut self, mut chunks: Vec<Bytes>) {
        if self.chunks.is_empty() {
            chunks.clear();
            self.chunks = chunks;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `stream` fed in pieces cut at `cuts`, collecting every item.
    fn decode_all(
        mut dec: Decoder,
        stream: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<Decoded>, CodecError> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        ends.push(stream.len());
        ends.sort_unstable();
        for end in ends {
            let mut piece = &stream[start..end];
            while let Some(item) = dec.decode(&mut piece)? {
                out.push(item);
            }
            assert!(piece.is_empty());
            start = end;
        }
        Ok(out)
    }

    fn concat(chunks: Vec<Bytes>) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    proptest! {
        #[test]
        fn frames_round_trip_whatever_the_pieces(
            frames in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    proptest::collection::vec(any::<u8>(), COPY_LIMIT - 2..COPY_LIMIT + 40),
                ],
                0..12,
            ),
            reason in "\\PC{0,40}",
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let mut enc = Encoder::new();
            for f in &frames {
                enc.push_frame(f.clone());
            }
            enc.push_close(&reason);
            let queued = enc.queued();
            let stream = concat(enc.take());
            prop_assert_eq!(stream.len(), queued);
            prop_assert!(enc.is_empty());
            let got = decode_all(Decoder::new(1 << 20), &stream, &cuts).unwrap();
            let mut want: Vec<Decoded> = frames.into_iter().map(Decoded::Frame).collect();
            want.push(Decoded::Close(reason));
            prop_assert_eq!(got, want);
        }

        #[test]
        fn headers_round_trip(len in 0..=MAX_HEADER_LEN, kind in 0u8..3) {
            let h = match kind {
                0 => Header::Data { len },
                1 => Header::Close { len },
                _ => Header::Striped { len },
            };
            prop_assert_eq!(Header::decode(h.encode()), Ok(h));
        }

        /// Arbitrary bytes never panic the decoder, and whatever it reserves stays within
        /// what it was fed plus the bounded read-ahead.
        #[test]
        fn garbage_never_panics(stream in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut dec = Decoder::new(1 << 30).allow_striped(true);
            let mut input = &stream[..];
            while let Ok(Some(_)) = dec.decode(&mut input) {}
            if let Some(body) = &dec.body {
                prop_assert!(body.bytes.capacity() <= INITIAL_RESERVE.max(stream.len()));
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused_on_its_header() {
        let mut dec = Decoder::new(1024);
        let header = Header::Data { len: 1025 }.encode();
        assert_eq!(
            dec.decode(&mut &header[..]),
            Err(CodecError::FrameTooLarge {
                len: 1025,
                limit: 1024
            })
        );
        let at_limit = [&Header::Data { len: 1024 }.encode()[..], &[7; 1024]].concat();
        assert_eq!(
            Decoder::new(1024).decode(&mut &at_limit[..]),
            Ok(Some(Decoded::Frame(vec![7; 1024])))
        );
    }

    #[test]
    fn a_huge_announced_frame_reserves_little() {
        let mut dec = Decoder::new(1 << 30);
        let header = Header::Data { len: 1 << 30 }.encode();
        let mut input = &header[..];
        assert_eq!(dec.decode(&mut input), Ok(None));
        let body = dec.body.as_ref().expect("a frame in progress");
        assert!(body.bytes.capacity() <= INITIAL_RESERVE);
        assert!(!dec.is_idle());
    }

    /// Once 1 MiB of a larger frame arrived, the whole of it is reserved in one step.
    #[test]
    fn a_large_frame_is_reserved_whole_once_a_mebibyte_arrived() {
        let len = 3 * INITIAL_RESERVE + 5;
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut stream = Header::Data { len: len as u64 }.encode().to_vec();
        stream.extend_from_slice(&payload);
        let mut dec = Decoder::new(1 << 30);
        let mut fed = 0;
        let mut out = None;
        for piece in stream.chunks(64 * 1024) {
            let mut input = piece;
            fed += piece.len();
            if let Some(d) = dec.decode(&mut input).unwrap() {
                out = Some(d);
                break;
            }
            let body = dec.body.as_ref().expect("a frame in progress");
            if fed - HEADER_LEN <= INITIAL_RESERVE {
                // Not more than the initial reserve has arrived.
                assert!(body.bytes.capacity() <= INITIAL_RESERVE);
            } else {
                assert_eq!(body.bytes.capacity(), len, "after {fed} bytes");
            }
        }
        assert_eq!(out, Some(Decoded::Frame(payload)));
    }

    /// A frame given in parts encodes as the joined frame does, and a long tail is queued
    /// as the very buffer it was given in (not copied).
    #[test]
    fn a_frame_in_parts_encodes_as_one_and_its_long_tail_is_not_copied() {
        for tail_len in [0, 10, COPY_LIMIT, COPY_LIMIT + 1, 200_000] {
            let head: Frame = vec![9, 8, 7];
            let tail = Bytes::from((0..tail_len).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
            let mut parts = Encoder::new();
            parts.push_frame(vec![1]);
            parts.push_parts(head.clone(), tail.clone());
            parts.push_frame(vec![2]);
            let mut joined = head.clone();
            joined.extend_from_slice(&tail);
            let mut whole = Encoder::new();
            whole.push_frame(vec![1]);
            whole.push_frame(joined);
            whole.push_frame(vec![2]);
            assert_eq!(parts.queued(), whole.queued());
            let parts_chunks = parts.take();
            assert_eq!(
                parts_chunks.concat(),
                whole.take().concat(),
                "tail of {tail_len}"
            );
            let shared = parts_chunks.iter().any(|c| c.as_ptr() == tail.as_ptr());
            assert_eq!(shared, tail_len > COPY_LIMIT, "tail of {tail_len}");
        }
    }

    #[test]
    fn first_frame_limit_applies_once() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&Header::Data { len: 16 }.encode());
        stream.extend_from_slice(&[1; 16]);
        stream.extend_from_slice(&Header::Data { len: 100 }.encode());
        stream.extend_from_slice(&[2; 100]);
        let got = decode_all(Decoder::new(1024).with_first_frame_limit(16), &stream, &[]);
        assert_eq!(
            got,
            Ok(vec![
                Decoded::Frame(vec![1; 16]),
                Decoded::Frame(vec![2; 100])
            ])
        );
        let big_first = [&Header::Data { len: 17 }.encode()[..], &[0; 17]].concat();
        assert_eq!(
            decode_all(
                Decoder::new(1024).with_first_frame_limit(16),
                &big_first,
                &[]
            ),
            Err(CodecError::FrameTooLarge { len: 17, limit: 16 })
        );
        // A close is not a data frame: it neither uses nor lifts the first-frame limit.
        let close_first = [&Header::Close { len: 2 }.encode()[..], b"ok"].concat();
        assert_eq!(
            decode_all(
                Decoder::new(1024).with_first_frame_limit(1),
                &close_first,
                &[]
            ),
            Ok(vec![Decoded::Close("ok".into())])
        );
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let both = (CLOSE_BIT | STRIPE_BIT | 3).to_le_bytes();
        assert_eq!(
            Decoder::new(1024)
                .allow_striped(true)
                .decode(&mut &both[..]),
            Err(CodecError::StripedClose)
        );
        let striped = Header::Striped { len: 16 }.encode();
        assert_eq!(
            Decoder::new(1024).decode(&mut &striped[..]),
            Err(CodecError::StripedNotAllowed)
        );
        assert_eq!(
            Decoder::new(1024)
                .allow_striped(true)
                .decode(&mut &striped[..]),
            Ok(Some(Decoded::Striped { len: 16 }))
        );
        let long_close = Header::Close {
            len: MAX_CLOSE_REASON as u64 + 1,
        }
        .encode();
        assert_eq!(
            Decoder::new(1 << 20).decode(&mut &long_close[..]),
            Err(CodecError::CloseReasonTooLong {
                len: MAX_CLOSE_REASON as u64 + 1
            })
        );
        assert!(matches!(
            CodecError::StripedClose.into_net_error("p"),
            NetError::Protocol { .. }
        ));
        assert!(matches!(
            CodecError::FrameTooLarge { len: 2, limit: 1 }.into_net_error("p"),
            NetError::FrameTooLarge { len: 2, limit: 1 }
        ));
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(MAX_CLOSE_REASON);
        let mut enc = Encoder::new();
        enc.push_close(&reason);
        let stream = concat(enc.take());
        match Decoder::new(16).decode(&mut &stream[..]) {
            Ok(Some(Decoded::Close(r))) => {
                assert!(r.len() <= MAX_CLOSE_REASON && r.len() >= MAX_CLOSE_REASON - 1);
                assert!(r.chars().all(|c| c == 'é'));
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn striped_header_and_first_part_are_queued_in_order() {
        let mut enc = Encoder::new();
        enc.push_frame(vec![1, 2]);
        enc.push_striped(10, Bytes::from_static(b"abcde"));
        let stream = concat(enc.take());
        let mut dec = Decoder::new(1024).allow_striped(true);
        let mut input = &stream[..];
        assert_eq!(dec.decode(&mut input), Ok(Some(Decoded::Frame(vec![1, 2]))));
        assert_eq!(
            dec.decode(&mut input),
            Ok(Some(Decoded::Striped { len: 10 }))
        );
        assert!(dec.is_idle());
        assert_eq!(input, b"abcde");
    }
}
