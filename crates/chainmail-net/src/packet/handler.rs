//! Connection handler of the packet stream protocol: one per connection.
//!
//! Outbound: one long-lived stream, opened when the first frame is queued,
//! fed from a bounded queue the behaviour fills. Inbound: up to the peer's
//! cap of concurrent streams, each read frame by frame; every complete frame
//! passes the peer's shared rate limiter before it goes up to the behaviour.

use std::{
    io,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    AsyncWriteExt, StreamExt,
    future::BoxFuture,
    stream::{self, BoxStream, SelectAll},
};
use libp2p::{
    StreamProtocol,
    core::upgrade::ReadyUpgrade,
    swarm::{
        ConnectionHandler, ConnectionHandlerEvent, Stream, StreamUpgradeError, SubstreamProtocol,
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};
use tokio::sync::mpsc;

use crate::{
    Frame,
    limiter::{Admission, SharedInbound, StreamSlot, now},
    metrics::{Counters, inc},
    protocol::{ReadFrame, read_frame},
};

/// Events from the handler to the behaviour.
#[derive(Debug)]
pub(crate) enum HandlerEvent {
    /// A frame within the rate limit.
    Frame(Box<Frame>),
}

/// State of the outbound stream.
enum Outbound {
    /// No stream; waiting for a frame to send.
    Idle(mpsc::Receiver<Box<Frame>>),
    /// A stream was requested; `first` is sent when it is ready.
    Opening {
        queue: mpsc::Receiver<Box<Frame>>,
        first: Box<Frame>,
    },
    /// Frames are being written; the future gives the queue back when the
    /// stream breaks.
    Writing(BoxFuture<'static, mpsc::Receiver<Box<Frame>>>),
    /// The remote does not speak the protocol on this connection: every
    /// frame queued here is dropped.
    Unsupported(mpsc::Receiver<Box<Frame>>),
    /// The behaviour dropped the queue's sender: nothing more will come.
    Closed,
}

/// The packet protocol's handler of one connection.
pub(crate) struct Handler {
    protocol: StreamProtocol,
    negotiation_timeout: Duration,
    counters: Arc<Counters>,
    inbound_limits: SharedInbound,
    inbound: SelectAll<BoxStream<'static, Box<Frame>>>,
    outbound: Outbound,
}

impl Handler {
    pub(crate) fn new(
        protocol: StreamProtocol,
        negotiation_timeout: Duration,
        counters: Arc<Counters>,
        inbound_limits: SharedInbound,
        queue: mpsc::Receiver<Box<Frame>>,
    ) -> Self {
        Self {
            protocol,
            negotiation_timeout,
            counters,
            inbound_limits,
            inbound: SelectAll::new(),
            outbound: Outbound::Idle(queue),
        }
    }

    fn substream_protocol(&self) -> SubstreamProtocol<ReadyUpgrade<StreamProtocol>> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
            .with_timeout(self.negotiation_timeout)
    }

    fn on_inbound_stream(&mut self, stream: Stream) {
        let Some(slot) = self.inbound_limits.open_stream() else {
            tracing::debug!("packet stream over the per-peer cap, resetting it");
            inc(&self.counters.packet_streams_refused);
            drop(stream); // dropping an open stream resets it
            return;
        };
        inc(&self.counters.packet_streams_accepted);
        self.inbound.push(read_frames(Reader {
            stream,
            limits: self.inbound_limits.clone(),
            counters: self.counters.clone(),
            _slot: slot,
        }));
    }

    fn on_outbound_stream(&mut self, stream: Stream) {
        match std::mem::replace(&mut self.outbound, Outbound::Closed) {
            Outbound::Opening { queue, first } => {
                inc(&self.counters.packet_streams_opened);
                self.outbound = Outbound::Writing(Box::pin(write_frames(
                    stream,
                    queue,
                    first,
                    self.counters.clone(),
                )));
            }
            other => {
                // Never requested: cannot happen, but do not keep it.
                self.outbound = other;
            }
        }
    }

    fn on_dial_upgrade_error(&mut self, error: StreamUpgradeError<std::convert::Infallible>) {
        let Outbound::Opening { queue, first: _ } =
            std::mem::replace(&mut self.outbound, Outbound::Closed)
        else {
            return;
        };
        inc(&self.counters.dropped_no_connection); // `first`
        match error {
            StreamUpgradeError::NegotiationFailed => {
                tracing::debug!("remote does not speak the packet protocol");
                self.outbound = Outbound::Unsupported(queue);
            }
            error => {
                tracing::debug!(%error, "opening a packet stream failed");
                // Try again with the next frame.
                self.outbound = Outbound::Idle(queue);
            }
        }
    }

    /// Drives the outbound side. Returns a stream request when one is due.
    fn poll_outbound(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<SubstreamProtocol<ReadyUpgrade<StreamProtocol>>> {
        loop {
            match std::mem::replace(&mut self.outbound, Outbound::Closed) {
                Outbound::Idle(mut queue) => match queue.poll_recv(cx) {
                    Poll::Ready(Some(first)) => {
                        self.outbound = Outbound::Opening { queue, first };
                        return Some(self.substream_protocol());
                    }
                    Poll::Ready(None) => return None, // Closed
                    Poll::Pending => {
                        self.outbound = Outbound::Idle(queue);
                        return None;
                    }
                },
                opening @ Outbound::Opening { .. } => {
                    self.outbound = opening;
                    return None;
                }
                Outbound::Writing(mut writer) => match writer.as_mut().poll(cx) {
                    Poll::Ready(queue) => {
                        // The stream broke or was closed; reopen on the
                        // next frame.
                        self.outbound = Outbound::Idle(queue);
                    }
                    Poll::Pending => {
                        self.outbound = Outbound::Writing(writer);
                        return None;
                    }
                },
                Outbound::Unsupported(mut queue) => loop {
                    match queue.poll_recv(cx) {
                        Poll::Ready(Some(_)) => inc(&self.counters.dropped_no_connection),
                        Poll::Ready(None) => return None,
                        Poll::Pending => {
                            self.outbound = Outbound::Unsupported(queue);
                            return None;
                        }
                    }
                },
                Outbound::Closed => return None,
            }
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = std::convert::Infallible;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        self.substream_protocol()
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        // Outbound first, so a busy inbound side cannot starve it.
        if let Some(protocol) = self.poll_outbound(cx) {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        if let Poll::Ready(Some(frame)) = self.inbound.poll_next_unpin(cx) {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                HandlerEvent::Frame(frame),
            ));
        }
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.on_inbound_stream(stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => self.on_outbound_stream(stream),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.on_dial_upgrade_error(error)
            }
            _ => {}
        }
    }
}

/// Writes `first`, then every frame from `queue`, flushing whenever the
/// queue is empty. Gives the queue back when the stream fails or the
/// queue's sender is gone.
async fn write_frames(
    mut stream: Stream,
    mut queue: mpsc::Receiver<Box<Frame>>,
    first: Box<Frame>,
    counters: Arc<Counters>,
) -> mpsc::Receiver<Box<Frame>> {
    let mut next = Some(first);
    let result: io::Result<()> = async {
        loop {
            let frame = match next.take() {
                Some(frame) => frame,
                None => match queue.try_recv() {
                    Ok(frame) => frame,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        stream.flush().await?;
                        match queue.recv().await {
                            Some(frame) => frame,
                            None => return stream.close().await,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return stream.close().await,
                },
            };
            if let Err(error) = stream.write_all(&frame[..]).await {
                inc(&counters.dropped_no_connection);
                return Err(error);
            }
            inc(&counters.frames_out);
        }
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(%error, "outbound packet stream failed");
    }
    queue
}

/// One inbound packet stream being read.
struct Reader {
    stream: Stream,
    limits: SharedInbound,
    counters: Arc<Counters>,
    /// Holds the peer's stream slot until the stream is dropped.
    _slot: StreamSlot,
}

/// The frames of one inbound stream that pass the rate limit. The stream
/// ends (and is dropped, which resets it if still open) at the end of the
/// input, on an I/O error or when the peer floods.
fn read_frames(reader: Reader) -> BoxStream<'static, Box<Frame>> {
    stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let mut buf: Box<Frame> = Box::new([0u8; crate::PACKET_SIZE]);
        loop {
            match read_frame(&mut reader.stream, &mut buf).await {
                Ok(ReadFrame::Complete) => match reader.limits.admit(now()) {
                    Admission::Accept => {
                        inc(&reader.counters.frames_in);
                        return Some((buf, Some(reader)));
                    }
                    Admission::Drop => inc(&reader.counters.dropped_rate_limited),
                    Admission::SourceDrop => inc(&reader.counters.dropped_source_limited),
                    Admission::Reset => {
                        inc(&reader.counters.dropped_rate_limited);
                        inc(&reader.counters.packet_streams_reset);
                        tracing::debug!("peer floods the packet stream, resetting it");
                        return None;
                    }
                },
                Ok(ReadFrame::End) => return None,
                Ok(ReadFrame::Partial(len)) => {
                    inc(&reader.counters.dropped_malformed);
                    tracing::debug!(len, "packet stream ended inside a frame");
                    return None;
                }
                Err(error) => {
                    tracing::debug!(%error, "inbound packet stream failed");
                    return None;
                }
            }
        }
    })
    .boxed()
}
