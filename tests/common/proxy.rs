//! A TCP proxy that a test can cut and restore, to take a database or SageMaker "down" for a
//! while without touching the real server.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::copy_bidirectional,
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
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: Target) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = watch::channel(0u64);
        let task = {
            let down = down.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if down.load(Ordering::SeqCst) {
                        drop(client); // refused: closed at once
                        continue;
                    }
                    let target = target.clone();
                    let mut cuts = cuts.clone();
                    // Only cuts from now on concern this connection.
                    cuts.borrow_and_update();
                    tokio::spawn(async move {
                        let mut client = client;
                        let forwarded = async {
                            match target {
                                Target::Tcp(addr) => {
                                    let mut server = TcpStream::connect(addr).await?;
                                    copy_bidirectional(&mut client, &mut server).await
                                }
                                Target::Unix(path) => {
                                    let mut server = UnixStream::connect(path).await?;
                                    copy_bidirectional(&mut client, &mut server).await
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|n| *n += 1);
    }
}
