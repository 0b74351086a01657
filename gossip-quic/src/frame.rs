//! Stream framing, without I/O: the kind byte a stream starts with, the caps of each place, and the
//! check of a frame's length prefix that [`crate::transport`] makes before reading (or allocating)
//! anything for the frame.
//!
//! Depends on nothing, so that the fuzz target `fuzz/fuzz_targets/gossip_streams.rs` includes this
//! file as it is (with the gossip core and the relay's wire format) without building quinn.

/// First byte of a sync stream.
pub const STREAM_SYNC: u8 = 1;
/// First byte of a request stream.
pub const STREAM_REQUEST: u8 = 2;
/// Largest request accepted (a relay request names a unit and a few options).
pub const MAX_REQUEST: usize = 64 << 10;
/// Largest response accepted (a relay response carries at most 1 MiB of command output, plus its
/// envelope).
pub const MAX_RESPONSE: usize = (1 << 20) + (64 << 10);

/// The length a frame's 4-byte big-endian prefix announces, if it is at most `cap`; otherwise why
/// the frame is refused (before any of its bytes is read).
pub fn frame_len(prefix: [u8; 4], cap: usize) -> Result<usize, String> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > cap {
        return Err(format!(
            "frame of {len} bytes exceeds the cap of {cap} bytes"
        ));
    }
    Ok(len)
}
