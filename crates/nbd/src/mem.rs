//! In-memory stream and device, for tests and the fuzz target: a whole NBD session can be
//! replayed from a byte string without sockets or files.

use std::io::{self, Cursor, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::{
    BlockDevice, DeviceError, ExportInfo, Exports, Limits, OpenError, Outcome, Stream,
};

/// A stream whose input is fixed up front and whose output is collected.
#[derive(Debug, Default)]
pub struct MemStream {
    input: Mutex<Cursor<Vec<u8>>>,
    output: Mutex<Vec<u8>>,
}

impl MemStream {
    pub fn new(input: Vec<u8>) -> Self {
        MemStream {
            input: Mutex::new(Cursor::new(input)),
            output: Mutex::new(Vec::new()),
        }
    }
    pub fn output(&self) -> Vec<u8> {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Read for &MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .read(buf)
    }
}

impl Write for &MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for MemStream {
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn shutdown(&self) {}
}

/// A RAM-backed block device.
#[derive(Debug)]
pub struct MemDevice {
    data: Mutex<Vec<u8>>,
}

impl MemDevice {
    pub fn new(size: usize) -> Self {
        MemDevice {
            data: Mutex::new(vec![0; size]),
        }
    }
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }
    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, DeviceError> {
        let start = usize::try_from(offset).map_err(|_| DeviceError::NoSpace)?;
        let end = start.checked_add(usize::try_from(len).map_err(|_| DeviceError::NoSpace)?);
        match end {
            Some(end) if end <= self.size() as usize => Ok(start..end),
            _ => Err(DeviceError::NoSpace),
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.lock().map(|d| d.len() as u64).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        let r = self.range(offset, buf.len() as u64)?;
        let d = self.data.lock().map_err(|_| DeviceError::Shutdown)?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<(), DeviceError> {
        let r = self.range(offset, buf.len() as u64)?;
        self.data.lock().map_err(|_| DeviceError::Shutdown)?[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError> {
        self.write_zeroes(offset, len, true, fua)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _may_trim: bool,
        _fua: bool,
    ) -> Result<(), DeviceError> {
        let r = self.range(offset, len)?;
        self.data.lock().map_err(|_| DeviceError::Shutdown)?[r].fill(0);
        Ok(())
    }
}

/// One export named `name` (the empty name also reaches it).
#[derive(Debug)]
pub struct OneExport {
    pub name: String,
    pub device: Arc<MemDevice>,
}

impl Exports for OneExport {
    fn list(&self) -> Vec<ExportInfo> {
        vec![ExportInfo {
            name: self.name.clone(),
            description: "memory".into(),
        }]
    }
    fn describe(&self, name: &str) -> Result<(ExportInfo, u64, bool), OpenError> {
        if name.is_empty() || name == self.name {
            Ok((self.list().remove(0), self.device.size(), false))
        } else {
            Err(OpenError::Unknown(name.to_owned()))
        }
    }
    fn open(&self, name: &str) -> Result<Arc<dyn BlockDevice>, OpenError> {
        self.describe(name)?;
        Ok(self.device.clone())
    }
}

/// Replays `input` as everything a client sends on one connection to a 1 MiB memory
/// export; returns what the server answered. The fuzz target calls this.
pub fn replay_session(input: &[u8]) -> (Vec<u8>, Outcome) {
    let exports = OneExport {
        name: "fuzz".into(),
        device: Arc::new(MemDevice::new(1 << 20)),
    };
    let stream = Arc::new(MemStream::new(input.to_vec()));
    let limits = Limits {
        workers: 2,
        max_payload: 1 << 20,
        ..Limits::default()
    };
    let outcome = crate::serve(stream.clone(), &exports, &limits);
    (stream.output(), outcome)
}
