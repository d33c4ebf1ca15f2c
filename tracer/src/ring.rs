//! The run's ring buffer, read through tokio: every record available, copied out in
//! one buffer per drain.
use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use bytes::{Bytes, BytesMut};
use tokio::io::unix::AsyncFd;

/// The run's ring buffer, readable through tokio.
pub struct Ring {
    pub fd: AsyncFd<RingBuf<MapData>>,
}

impl Ring {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map("EVENTS")
            .context("map EVENTS is missing from the eBPF object")?;
        let rb = RingBuf::try_from(map)?;
        Ok(Self {
            fd: register(rb).context("registering the ring buffer with tokio")?,
        })
    }

    /// Every record available now, copied out of the ring into one buffer (one
    /// allocation per drain, not per record); each record is a view of it.
    pub fn drain(&mut self) -> Vec<Bytes> {
        let rb = self.fd.get_mut();
        let mut buf = BytesMut::new();
        let mut lens = Vec::new();
        while let Some(item) = rb.next() {
            buf.extend_from_slice(&item);
            lens.push(item.len());
        }
        lens.into_iter().map(|n| buf.split_to(n).freeze()).collect()
    }
}

/// Registers an fd-owning map or logger with tokio.
pub fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd and moves into the AsyncFd, which deregisters it on
    // drop before `inner` closes it, so the fd stays valid while registered.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}
