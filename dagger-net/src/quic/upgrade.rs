//! The switch of a same-host QUIC link to shared-memory rings, after the handshake.
//!
//! Both sides already exchanged [`Offer`]s and agreed. The dialler then creates the two
//! rings and writes `1` followed by their names (dialler-to-acceptor first), or `0` when
//! it could not create them; the acceptor opens and maps both and answers `1`, or `0` when
//! it could not (then both stay on QUIC). Both unlink the objects once the answer is
//! known, and whatever happens the dialler unlinks them before returning, so no object
//! outlives the handshake.

use super::handshake::{read_error, write_error};
use crate::ring::shm::{self, Ring, NAME_LEN};
use crate::ring::{Offer, OFFER_FIXED};
use crate::{NetConfig, NetError};
use quinn::{RecvStream, SendStream};

/// Removes the named objects when dropped (also when the handshake is cancelled).
struct Unlink(Vec<String>);

impl Drop for Unlink {
    fn drop(&mut self) {
        for name in &self.0 {
            shm::unlink(name);
        }
    }
}

fn protocol(peer: &str, reason: String) -> NetError {
    NetError::Protocol {
        peer: peer.to_owned(),
        reason,
    }
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8], peer: &str) -> Result<(), NetError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            protocol(peer, "stream ended inside the ring handshake".into())
        }
        quinn::ReadExactError::ReadError(e) => read_error(e, peer),
    })
}

/// Reads the peer's offer (after its hello or its preamble).
pub(crate) async fn read_offer(recv: &mut RecvStream, peer: &str) -> Result<Offer, NetError> {
    let mut fixed = [0u8; OFFER_FIXED];
    read_exact(recv, &mut fixed, peer).await?;
    let (enabled, pid, len) = Offer::parse_fixed(fixed).map_err(|r| protocol(peer, r))?;
    let mut host = vec![0u8; len];
    read_exact(recv, &mut host, peer).await?;
    Ok(Offer { enabled, pid, host })
}

/// The dialler's part: creates the rings and hands their names over. Returns
/// `(ours to write, ours to read)`, or `None` to stay on QUIC.
pub(crate) async fn dial_rings(
    send: &mut SendStream,
    recv: &mut RecvStream,
    config: &NetConfig,
    peer: &str,
) -> Result<Option<(Ring, Ring)>, NetError> {
    let mut unlink = Unlink(Vec::new());
    let made = Ring::create(config.ring_capacity).and_then(|a| {
        unlink.0.push(a.name().to_owned());
        let b = Ring::create(config.ring_capacity)?;
        unlink.0.push(b.name().to_owned());
        Ok((a, b))
    });
    let (a, b) = match made {
        Ok(rings) => rings,
        Err(e) => {
            tracing::debug!(peer, error = %e, "same-host rings unavailable; staying on QUIC");
            send.write_all(&[0])
                .await
                .map_err(|e| write_error(e, peer))?;
            return Ok(None);
        }
    };
    #[cfg(test)]
    crate::ring::tests::tap(&a, &b);
    let mut msg = Vec::with_capacity(1 + 2 * NAME_LEN);
    msg.push(1);
    msg.extend_from_slice(a.name().as_bytes());
    msg.extend_from_slice(b.name().as_bytes());
    send.write_all(&msg)
        .await
        .map_err(|e| write_error(e, peer))?;
    let mut ack = [0u8];
    read_exact(recv, &mut ack, peer).await?;
    drop(unlink);
    match ack[0] {
        1 => Ok(Some((a, b))),
        0 => Ok(None),
        x => Err(protocol(peer, format!("bad ring answer {x}"))),
    }
}

/// The acceptor's part: reads the names, opens the rings and answers. Returns
/// `(ours to write, ours to read)`, or `None` to stay on QUIC.
pub(crate) async fn accept_rings(
    send: &mut SendStream,
    recv: &mut RecvStream,
    peer: &str,
) -> Result<Option<(Ring, Ring)>, NetError> {
    let mut status = [0u8];
    read_exact(recv, &mut status, peer).await?;
    match status[0] {
        0 => return Ok(None),
        1 => {}
        x => return Err(protocol(peer, format!("bad ring setup {x}"))),
    }
    let mut names = [0u8; 2 * NAME_LEN];
    read_exact(recv, &mut names, peer).await?;
    let name = |b: &[u8]| -> Result<String, NetError> {
        let n =
            std::str::from_utf8(b).map_err(|_| protocol(peer, "ring name is not UTF-8".into()))?;
        shm::validate_name(n).map_err(|e| protocol(peer, e.to_string()))?;
        Ok(n.to_owned())
    };
    let (a, b) = (name(&names[..NAME_LEN])?, name(&names[NAME_LEN..])?);
    let unlink = Unlink(vec![a.clone(), b.clone()]);
    let opened = Ring::open(&a).and_then(|ra| Ok((ra, Ring::open(&b)?)));
    // Both ends have mapped the objects (or never will): their names can go.
    drop(unlink);
    match opened {
        Ok((rx, tx)) => {
            send.write_all(&[1])
                .await
                .map_err(|e| write_error(e, peer))?;
            Ok(Some((tx, rx)))
        }
        Err(e) => {
            tracing::debug!(peer, error = %e, "cannot open the peer's rings; staying on QUIC");
            send.write_all(&[0])
                .await
                .map_err(|e| write_error(e, peer))?;
            Ok(None)
        }
    }
}
