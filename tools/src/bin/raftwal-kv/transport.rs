//! Peers over TCP: one outgoing connection per peer, carrying length-prefixed frames
//! (`u32` little-endian length, then `Batch::encode`: everything the node's regions send that
//! peer in one ready cycle), and a listener whose connections are read frame by frame into the
//! node's event queue.
//!
//! Sending never blocks the Raft loop: each peer has a bounded queue drained by its own thread.
//! A batch that cannot be queued or written is dropped and reported (`Unreachable`, and a
//! failed snapshot for each `MsgSnap` in it); Raft retransmits. After a failed connect or write, the
//! sender waits out a backoff (doubling, bounded) before it connects again, dropping what
//! arrives meanwhile.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use raftwal::raft::{Batch, MessageType};

use crate::node::Event;

/// Largest frame accepted: far above any batch this example sends (snapshots included).
const MAX_FRAME_BYTES: usize = 64 << 20;
/// Batches queued for one peer before new ones are dropped (one per ready cycle).
const PEER_QUEUE_LEN: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts peers' connections on `addr`; every decoded batch becomes an [`Event::Batch`].
pub fn listen(addr: &str, events: Sender<Event>) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    thread::Builder::new().name("raft-accept".into()).spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let events = events.clone();
                    let spawned = thread::Builder::new()
                        .name("raft-read".into())
                        .spawn(move || read_frames(stream, &events));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "raft transport: cannot start a reader");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "raft transport: accept failed"),
            }
        }
    })?;
    Ok(())
}

/// Reads frames until the connection closes or sends something malformed.
fn read_frames(stream: TcpStream, events: &Sender<Event>) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            return;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME_BYTES {
            tracing::warn!(
                len,
                limit = MAX_FRAME_BYTES,
                "raft transport: frame too large; closing"
            );
            return;
        }
        let mut frame = vec![0u8; len];
        if reader.read_exact(&mut frame).is_err() {
            return;
        }
        match Batch::decode(&frame) {
            Ok(b) => {
                if events.send(Event::Batch(Box::new(b))).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "raft transport: undecodable frame; closing");
                return;
            }
        }
    }
}

/// The sending side of one peer. Dropping it ends its thread.
pub struct Peer {
    /// The address the peer listens on.
    pub addr: String,
    queue: SyncSender<Batch>,
}

impl Peer {
    /// Starts the sender thread for peer `id` at `addr`.
    pub fn start(id: u64, addr: String, events: Sender<Event>) -> io::Result<Peer> {
        let (queue, rx) = sync_channel(PEER_QUEUE_LEN);
        let target = addr.clone();
        thread::Builder::new()
            .name(format!("raft-send-{id}"))
            .spawn(move || send_loop(id, &target, &rx, &events))?;
        Ok(Peer { addr, queue })
    }

    /// Queues `b`; gives it back if the queue is full (or the thread gone).
    pub fn send(&self, b: Batch) -> Result<(), Batch> {
        match self.queue.try_send(b) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => Err(b),
        }
    }
}

fn connect(addr: &str) -> io::Result<BufWriter<TcpStream>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to nothing"));
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                return Ok(BufWriter::new(s));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn write_frame(w: &mut BufWriter<TcpStream>, b: &Batch) -> io::Result<()> {
    let frame = b.encode();
    assert!(frame.len() <= MAX_FRAME_BYTES, "batch of {} bytes is too large", frame.len());
    let len = u32::try_from(frame.len()).expect("bounded by MAX_FRAME_BYTES");
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&frame)?;
    w.flush()
}

/// Runs until the [`Peer`] is dropped (its queue closes).
fn send_loop(to: u64, addr: &str, rx: &Receiver<Batch>, events: &Sender<Event>) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    while let Ok(m) = rx.recv() {
        if conn.is_none() && Instant::now() >= retry_at {
            match connect(addr) {
                Ok(c) => {
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                }
                Err(_) => {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let sent = match conn.as_mut() {
            Some(w) => match write_frame(w, &m) {
                Ok(()) => true,
                Err(_) => {
                    conn = None;
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    false
                }
            },
            None => false,
        };
        if report(to, &m, sent, events).is_err() {
            return;
        }
    }
}

/// Tells the node how sending `b` to `to` went: each snapshot in it finished or failed, and the
/// peer unreachable if it was not sent. Errs once the node is gone.
pub fn report(to: u64, b: &Batch, sent: bool, events: &Sender<Event>) -> Result<(), ()> {
    // Bounded by the batch's messages.
    for (group, m) in &b.messages {
        if m.msg_type == MessageType::MsgSnap {
            events.send(Event::SnapshotStatus(to, *group, sent)).map_err(|_| ())?;
        }
    }
    if !sent {
        events.send(Event::Unreachable(to)).map_err(|_| ())?;
    }
    Ok(())
}
