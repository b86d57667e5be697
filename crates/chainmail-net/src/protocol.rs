//! Wire formats: packet frames and the fetch request-response codec.
//!
//! **Packet stream** (`/chainmail/<id>/packet/1.0.0`): one direction only,
//! the opener writes frames of exactly [`PACKET_SIZE`] bytes back to back,
//! with no header, and never reads. The stream ends when the opener closes
//! it; bytes that do not complete a frame at that point are a malformed
//! frame and are dropped.
//!
//! **Fetch** (`/chainmail/<id>/fetch/1.0.0`): the requester writes a
//! request, closes its side and reads the response; each message is a
//! 4-byte big-endian length followed by that many bytes. A length above the
//! receiver's maximum is refused before anything is allocated.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{StreamProtocol, request_response};

use crate::{Frame, PACKET_SIZE};

/// What one attempt to read a frame gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrame {
    /// `buf` holds a complete frame.
    Complete,
    /// The stream ended cleanly between frames.
    End,
    /// The stream ended after this many bytes of a frame.
    Partial(usize),
}

/// Reads one frame into `buf`.
pub(crate) async fn read_frame<R>(io: &mut R, buf: &mut Frame) -> io::Result<ReadFrame>
where
    R: AsyncRead + Unpin,
{
    let mut filled = 0;
    while filled < PACKET_SIZE {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(if filled == 0 {
                ReadFrame::End
            } else {
                ReadFrame::Partial(filled)
            });
        }
        filled += n;
    }
    Ok(ReadFrame::Complete)
}

/// Size of the length prefix of fetch messages.
const LENGTH_PREFIX: usize = 4;

/// Length-prefixed bytes for the fetch protocol, with a maximum size for
/// each direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchCodec {
    pub(crate) max_request: usize,
    pub(crate) max_response: usize,
}

/// Reads one length-prefixed message of at most `max` bytes.
pub(crate) async fn read_message<R>(io: &mut R, max: usize, what: &str) -> io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; LENGTH_PREFIX];
    io.read_exact(&mut prefix).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes exceeds the maximum of {max} bytes"),
        ));
    }
    // Allocate as the bytes arrive, not as announced.
    let mut bytes = Vec::new();
    io.take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what} ended after {} of {len} bytes", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Writes one length-prefixed message of at most `max` bytes.
pub(crate) async fn write_message<W>(
    io: &mut W,
    bytes: &[u8],
    max: usize,
    what: &str,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len as usize <= max)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} of {} bytes exceeds the maximum of {max} bytes",
                    bytes.len()
                ),
            )
        })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

impl request_response::Codec for FetchCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, self.max_request, "request").await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, self.max_response, "response").await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &request, self.max_request, "request").await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &response, self.max_response, "response").await
    }
}

#[cfg(test)]
mod tests {
    use futures::{executor::block_on, io::Cursor};

    use super::*;

    #[test]
    fn frames_back_to_back_then_partial() {
        let mut bytes = vec![1u8; PACKET_SIZE];
        bytes.extend(vec![2u8; PACKET_SIZE]);
        bytes.extend(vec![3u8; 100]);
        let mut io = Cursor::new(bytes);
        let mut buf = [0u8; PACKET_SIZE];
        block_on(async {
            assert_eq!(
                read_frame(&mut io, &mut buf).await.unwrap(),
                ReadFrame::Complete
            );
            assert!(buf.iter().all(|b| *b == 1));
            assert_eq!(
                read_frame(&mut io, &mut buf).await.unwrap(),
                ReadFrame::Complete
            );
            assert!(buf.iter().all(|b| *b == 2));
            assert_eq!(
                read_frame(&mut io, &mut buf).await.unwrap(),
                ReadFrame::Partial(100)
            );
        });
        let mut io = Cursor::new(Vec::new());
        assert_eq!(
            block_on(read_frame(&mut io, &mut buf)).unwrap(),
            ReadFrame::End
        );
    }

    #[test]
    fn message_vector() {
        // Test vector: "abc" is 00 00 00 03 61 62 63.
        let mut io = Cursor::new(Vec::new());
        block_on(write_message(&mut io, b"abc", 16, "request")).unwrap();
        assert_eq!(io.get_ref(), &[0, 0, 0, 3, b'a', b'b', b'c']);
        let mut io = Cursor::new(io.into_inner());
        assert_eq!(
            block_on(read_message(&mut io, 16, "request")).unwrap(),
            b"abc"
        );
    }

    #[test]
    fn oversize_messages_are_refused_both_ways() {
        let mut io = Cursor::new(Vec::new());
        let err = block_on(write_message(&mut io, &[0; 17], 16, "request")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(io.get_ref().is_empty(), "nothing written");

        // A peer announcing 4 GiB: refused from the prefix alone.
        let mut io = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let err = block_on(read_message(&mut io, 1 << 20, "response")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("4294967295"), "{err}");
    }

    #[test]
    fn truncated_messages_are_errors() {
        for bytes in [vec![0, 0], vec![0, 0, 0, 5, 1, 2]] {
            let mut io = Cursor::new(bytes);
            assert_eq!(
                block_on(read_message(&mut io, 16, "request"))
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::UnexpectedEof
            );
        }
    }
}
