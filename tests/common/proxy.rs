//! A TCP proxy that a test can cut and restore, to take a database or SageMaker "down" for a
//! while without touching the real server; blackhole, to make a connection half-open (nothing
//! passes, nothing closes); and point elsewhere, as a DNS name moves in a failover.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, copy},
    net::{TcpListener, TcpStream, UnixStream},
    sync::watch,
    task::JoinHandle,
};

/// Where the proxy forwards to.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A running proxy on a loopback port.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    /// What the open connections whose client said it must stop passing (half-open).
    holes: watch::Sender<Option<Vec<u8>>>,
    target: Arc<Mutex<Target>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: Target) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = watch::channel(0u64);
        let (holes, holed) = watch::channel(None::<Vec<u8>>);
        let target = Arc::new(Mutex::new(target));
        let task = {
            let down = down.clone();
            let target = target.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if down.load(Ordering::SeqCst) {
                        drop(client); // refused: closed at once
                        continue;
                    }
                    let target = target.lock().unwrap().clone();
                    let mut cuts = cuts.clone();
                    // Only cuts from now on concern this connection.
                    cuts.borrow_and_update();
                    let holed = holed.clone();
                    tokio::spawn(async move {
                        let forwarded = async {
                            match target {
                                Target::Tcp(addr) => {
                                    let server = TcpStream::connect(addr).await?;
                                    relay(client, server, holed).await
                                }
                                Target::Unix(path) => {
                                    let server = UnixStream::connect(path).await?;
                                    relay(client, server, holed).await
                                }
                            }
                        };
                        tokio::select! {
                            _ = forwarded => {}
                            _ = cuts.changed() => {} // cut: both sides dropped
                        }
                    });
                }
            })
        };
        Self {
            addr,
            down,
            cut,
            holes,
            target,
            task,
        }
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// The open connections whose client has sent `said` (a statement, say) stop passing
    /// anything either way, and stay open: half-open, as when a network drops packets without
    /// a reset. New connections pass.
    pub fn blackhole(&self, said: &[u8]) {
        self.holes.send_replace(Some(said.to_vec()));
    }

    /// New connections go to `target` (open ones stay where they were).
    pub fn point_to(&self, target: Target) {
        *self.target.lock().unwrap() = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Passes bytes both ways until either side closes, or until a blackhole names what this
/// connection's client said: then it holds both sides open, passing nothing.
async fn relay<S>(
    client: TcpStream,
    server: S,
    mut holed: watch::Receiver<Option<Vec<u8>>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = tokio::io::split(server);
    let said = Mutex::new(Vec::new());
    let upstream = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = client_in.read(&mut buffer).await?;
            if n == 0 {
                return server_out.shutdown().await;
            }
            {
                let mut said = said.lock().unwrap();
                if said.len() < 1 << 20 {
                    said.extend_from_slice(&buffer[..n]);
                }
            }
            server_out.write_all(&buffer[..n]).await?;
        }
    };
    let downstream = async {
        copy(&mut server_in, &mut client_out).await?;
        client_out.shutdown().await
    };
    let holes = async {
        loop {
            if let Some(pattern) = holed.borrow_and_update().clone() {
                let said = said.lock().unwrap();
                if said.windows(pattern.len().max(1)).any(|w| w == pattern) {
                    return;
                }
            }
            if holed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        done = async { tokio::try_join!(upstream, downstream).map(drop) } => done,
        () = holes => {
            // Half-open: both sides stay open, nothing passes, until the proxy ends.
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}
