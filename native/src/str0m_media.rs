//! The media port backed by str0m, for bots, tests and the Python binding
//! (phones use their platform's libwebrtc: str0m has no echo cancellation,
//! jitter buffer or codecs). A session is a [`Bot`] (publisher + subscriber
//! `Rtc`, synthetic audio and VP8-shaped video carrying probes) driven on
//! two UDP sockets by a task on the caller's tokio runtime.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::bot::Bot;
use crate::ports::{
    IceServer, MediaEvents, MediaFactory, MediaSession, MediaStats, PeerConnection, PortError,
    VideoLayer,
};
use str0m::media::MediaKind;

/// Makes str0m sessions whose sockets bind to `local_ip`.
#[derive(Debug)]
pub struct Str0mMediaFactory {
    local_ip: IpAddr,
    runtime: tokio::runtime::Handle,
}

impl Str0mMediaFactory {
    /// Sessions run on `runtime`.
    pub fn with_runtime(local_ip: IpAddr, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Str0mMediaFactory { local_ip, runtime })
    }
}

/// The str0m media port for foreign callers (Python): sessions bind to
/// `local_ip` and run on the core's shared runtime.
#[uniffi::export]
pub fn str0m_media_factory(local_ip: String) -> Result<Arc<dyn MediaFactory>, PortError> {
    let local_ip = local_ip
        .parse()
        .map_err(|_| format!("not an IP address: {local_ip}"))?;
    Ok(Str0mMediaFactory::with_runtime(
        local_ip,
        crate::client::shared_runtime().handle().clone(),
    ))
}

impl MediaFactory for Str0mMediaFactory {
    fn create_session(
        &self,
        call_id: String,
        video: bool,
        _ice_servers: Vec<IceServer>,
        events: Arc<MediaEvents>,
    ) -> Result<Arc<dyn MediaSession>, PortError> {
        let _guard = self.runtime.enter();
        let bind = |ip| {
            let socket = std::net::UdpSocket::bind((ip, 0))?;
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)
        };
        let io = |e: std::io::Error| format!("socket: {e}");
        let publisher = bind(self.local_ip).map_err(io)?;
        let subscriber = bind(self.local_ip).map_err(io)?;
        let mut bot = Bot::new(
            &call_id,
            publisher.local_addr().map_err(io)?,
            subscriber.local_addr().map_err(io)?,
            Instant::now(),
        );
        bot.publish_video = video;
        let session = Arc::new(Str0mSession {
            bot: Mutex::new(bot),
            wake: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        self.runtime.spawn(drive(
            session.clone(),
            publisher,
            subscriber,
            events,
            call_id,
        ));
        Ok(session)
    }
}

struct Str0mSession {
    bot: Mutex<Bot>,
    /// The SDP or a setting changed: the driver polls the bot again.
    wake: Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Str0mSession {
    fn bot(&self) -> MutexGuard<'_, Bot> {
        self.bot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed<T>(&self, result: T) -> T {
        self.wake.notify_one();
        result
    }
}

impl MediaSession for Str0mSession {
    fn create_publisher_offer(&self, ice_restart: bool) -> Result<String, PortError> {
        let offer = self.bot().publisher_offer(ice_restart);
        self.changed(offer.map_err(PortError::from))
    }

    fn apply_publisher_answer(&self, sdp: String) -> Result<(), PortError> {
        let applied = self.bot().accept_publisher_answer(&sdp);
        self.changed(applied.map_err(PortError::from))
    }

    fn answer_subscriber_offer(&self, sdp: String) -> Result<String, PortError> {
        let answer = self.bot().answer_subscriber_offer(&sdp);
        self.changed(answer.map_err(PortError::from))
    }

    fn add_remote_candidate(
        &self,
        connection: PeerConnection,
        candidate: String,
    ) -> Result<(), PortError> {
        let candidate =
            str0m::Candidate::from_sdp_string(&candidate).map_err(|e| format!("candidate: {e}"))?;
        let mut bot = self.bot();
        match connection {
            PeerConnection::Publisher => bot.publisher.add_remote_candidate(candidate),
            PeerConnection::Subscriber => bot.subscriber.add_remote_candidate(candidate),
        }
        drop(bot);
        self.changed(Ok(()))
    }

    fn set_muted(&self, muted: bool) -> Result<(), PortError> {
        self.bot().audio_muted = muted;
        Ok(())
    }

    /// A bot has no playout; the core mutes its microphone (`set_muted`)
    /// while held, which is what the other side can observe.
    fn set_held(&self, _held: bool) -> Result<(), PortError> {
        Ok(())
    }

    fn set_camera_enabled(&self, enabled: bool) -> Result<(), PortError> {
        self.bot().video_off = !enabled;
        Ok(())
    }

    fn set_video_layers(&self, layers: Vec<VideoLayer>) -> Result<(), PortError> {
        let qualities: Vec<signaling::VideoQuality> = layers.into_iter().map(Into::into).collect();
        self.bot().apply_wanted_qualities(&qualities);
        Ok(())
    }

    fn send_data(&self, reliable: bool, frame: String) -> Result<(), PortError> {
        let label = if reliable {
            signaling::DATA_CHANNEL_RELIABLE
        } else {
            signaling::DATA_CHANNEL_LOSSY
        };
        let sent = self.bot().send_data(label, &frame);
        self.changed(sent.map_err(PortError::from))
    }

    fn stats(&self) -> Result<MediaStats, PortError> {
        let bot = self.bot();
        Ok(MediaStats {
            connected: bot.is_up(),
            packets_sent: bot.ticks_sent(),
            packets_received: bot.tracks.values().map(|t| t.packets).sum(),
            remote_tracks: bot.tracks.len() as u32,
        })
    }

    fn end_session(&self) -> Result<(), PortError> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }
}

/// Owns the sockets: datagrams in, transmits out, timers, a media tick
/// every 20 ms; tells the core when both connections are up.
async fn drive(
    session: Arc<Str0mSession>,
    publisher: UdpSocket,
    subscriber: UdpSocket,
    events: Arc<MediaEvents>,
    call_id: String,
) {
    let (publisher_addr, subscriber_addr) = {
        let mut bot = session.bot();
        // Keep only summaries: a call may run for hours.
        bot.record = false;
        (bot.publisher_addr, bot.subscriber_addr)
    };
    let mut media_tick = tokio::time::interval(Duration::from_millis(20));
    let mut publisher_buf = vec![0u8; 2048];
    let mut subscriber_buf = vec![0u8; 2048];
    let mut reported_up = false;
    // The bot decodes nothing: its first received packet of a kind stands
    // for the first decoded frame.
    let (mut first_audio, mut first_video) = (false, false);
    while !session.closed.load(std::sync::atomic::Ordering::Relaxed) {
        let (wake, transmits): (Instant, Vec<_>) = {
            let mut bot = session.bot();
            let wake = bot.poll();
            if bot.is_up() != reported_up {
                reported_up = !reported_up;
                if reported_up {
                    tracing::info!(call_id = %call_id, "str0m media connected");
                    events.connected();
                } else {
                    tracing::info!(call_id = %call_id, "str0m media disconnected");
                    events.disconnected();
                }
            }
            let awaiting_first = !(first_audio && first_video);
            for track in bot
                .tracks
                .values()
                .filter(|t| awaiting_first && t.packets > 0)
            {
                let first = match track.kind {
                    MediaKind::Audio => &mut first_audio,
                    MediaKind::Video => &mut first_video,
                };
                if !*first {
                    *first = true;
                    match track.kind {
                        MediaKind::Audio => events.first_audio(),
                        MediaKind::Video => events.first_video(),
                    }
                }
            }
            for (label, frame) in bot.data_received.drain(..) {
                events.data_received(label, frame);
            }
            (wake, bot.transmits.drain(..).collect())
        };
        for t in transmits {
            let socket = if t.source == publisher_addr {
                &publisher
            } else {
                &subscriber
            };
            let _ = socket.send_to(&t.contents, t.destination).await;
        }
        let sleep_until = wake.max(Instant::now() + Duration::from_millis(1));
        tokio::select! {
            r = publisher.recv_from(&mut publisher_buf) => if let Ok((n, source)) = r {
                session.bot().handle_datagram(source, publisher_addr, &publisher_buf[..n], Instant::now());
            },
            r = subscriber.recv_from(&mut subscriber_buf) => if let Ok((n, source)) = r {
                session.bot().handle_datagram(source, subscriber_addr, &subscriber_buf[..n], Instant::now());
            },
            _ = media_tick.tick() => session.bot().send_media(Instant::now()),
            _ = session.wake.notified() => {}
            _ = tokio::time::sleep_until(sleep_until.into()) => session.bot().handle_timeout(Instant::now()),
        }
    }
}
