//! Object headers: the list of messages (dataspace, datatype, layout, attributes, links, ...)
//! that describes one group or dataset, possibly spread over several chunks joined by
//! continuation messages. Version 1 (old files) and version 2 ("OHDR", newer files) are read.

use std::collections::{HashSet, VecDeque};

use super::checksum;
use super::cursor::{Cursor, to_usize};
use super::error::{Error, Result, bail};
use super::source::Reader;

/// Message type numbers used by this reader.
pub(super) mod kind {
    pub const DATASPACE: u16 = 0x01;
    pub const LINK_INFO: u16 = 0x02;
    pub const DATATYPE: u16 = 0x03;
    pub const LINK: u16 = 0x06;
    pub const LAYOUT: u16 = 0x08;
    pub const GROUP_INFO: u16 = 0x0A;
    pub const FILTER_PIPELINE: u16 = 0x0B;
    pub const ATTRIBUTE: u16 = 0x0C;
    pub const CONTINUATION: u16 = 0x10;
    pub const SYMBOL_TABLE: u16 = 0x11;
    pub const ATTRIBUTE_INFO: u16 = 0x15;
}

/// Version-1 headers count their messages in 16 bits; no real header comes close.
const MAX_MESSAGES: usize = 65_535;

/// Message flag bit: the message body lives elsewhere (shared / committed).
pub(super) const FLAG_SHARED: u8 = 0x02;

pub(super) struct Message {
    pub kind: u16,
    pub flags: u8,
    pub data: Vec<u8>,
}

pub(super) struct ObjectHeader {
    pub messages: Vec<Message>,
}

impl ObjectHeader {
    /// The first message of a kind.
    pub fn find(&self, kind: u16) -> Option<&Message> {
        self.messages.iter().find(|m| m.kind == kind)
    }

    pub fn all(&self, kind: u16) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(move |m| m.kind == kind)
    }

    pub fn has(&self, kind: u16) -> bool {
        self.find(kind).is_some()
    }
}

/// Reads the object header at file address `addr`.
pub(super) fn read(reader: &Reader, addr: u64) -> Result<ObjectHeader> {
    read_inner(reader, addr).map_err(|e| e.context(format!("object header at address {addr}")))
}

fn read_inner(reader: &Reader, addr: u64) -> Result<ObjectHeader> {
    let start = reader.read(addr, 4, "object header")?;
    let mut chunks = Chunks::new(reader);
    let version = if start == b"OHDR" {
        chunks.push_v2_first(addr)?;
        2
    } else if start.first() == Some(&1) {
        chunks.push_v1_first(addr)?;
        1
    } else {
        bail!("unknown object header version (first bytes {start:02x?})");
    };
    let mut messages = Vec::new();
    while let Some(block) = chunks.queue.pop_front() {
        parse_messages(&block, version, reader, &mut chunks, &mut messages)?;
    }
    Ok(ObjectHeader { messages })
}

/// Pending message blocks, with what keeps a crafted file from looping: each chunk address
/// is read once, and all chunks together may not exceed the file's length (real chunks never
/// overlap, so they cannot add up to more).
struct Chunks<'r> {
    reader: &'r Reader,
    queue: VecDeque<Vec<u8>>,
    seen: HashSet<u64>,
    budget: u64,
    /// v2 only: each message header carries a 2-byte creation order.
    creation_order: bool,
}

impl<'r> Chunks<'r> {
    fn new(reader: &'r Reader) -> Self {
        Chunks {
            reader,
            queue: VecDeque::new(),
            seen: HashSet::new(),
            budget: reader.len(),
            creation_order: false,
        }
    }

    /// Reads `len` bytes at `addr` once; `None` if that chunk was already read.
    fn fetch(&mut self, addr: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if !self.seen.insert(addr) {
            return Ok(None);
        }
        self.budget = match self.budget.checked_sub(len) {
            Some(left) => left,
            None => bail!("header chunks add up to more bytes than the file holds"),
        };
        self.reader.read(addr, len, "object header chunk").map(Some)
    }

    /// Version 1: a 16-byte prefix (version, reserved, message count, reference count,
    /// header size, padding to 8), then `header size` bytes of messages.
    fn push_v1_first(&mut self, addr: u64) -> Result<()> {
        let prefix = self.reader.read(addr, 16, "object header")?;
        let mut c = Cursor::new(&prefix);
        c.skip(8)?;
        let size = u64::from(c.u32()?);
        let first = addr
            .checked_add(16)
            .ok_or_else(|| Error::new("address overflows"))?;
        self.push_v1(first, size)
    }

    fn push_v1(&mut self, addr: u64, len: u64) -> Result<()> {
        if let Some(block) = self.fetch(addr, len)? {
            self.queue.push_back(block);
        }
        Ok(())
    }

    /// Version 2: "OHDR", version, flags, optional times and attribute phase-change values,
    /// chunk-0 size (1, 2, 4 or 8 bytes by flags), messages, checksum.
    fn push_v2_first(&mut self, addr: u64) -> Result<()> {
        let head = self.reader.read(addr, 6, "object header")?;
        let mut c = Cursor::new(&head);
        c.skip(4)?;
        let version = c.u8()?;
        if version != 2 {
            return Err(Error::unsupported(format!(
                "object header version {version}"
            )));
        }
        let flags = c.u8()?;
        self.creation_order = flags & 0x04 != 0;
        let times = if flags & 0x20 != 0 { 16 } else { 0 };
        let phase = if flags & 0x10 != 0 { 4 } else { 0 };
        let size_width = 1usize << (flags & 0x03);
        let prefix_len = 6 + times + phase + size_width;
        let prefix = self.reader.read(addr, prefix_len as u64, "object header")?;
        let mut c = Cursor::new(&prefix);
        c.skip(prefix_len - size_width)?;
        let size = c.uint(size_width)?;
        let total = size
            .checked_add(prefix_len as u64 + 4)
            .ok_or_else(|| Error::new("chunk size overflows"))?;
        if let Some(block) = self.fetch(addr, total)? {
            let body = verify_v2(&block, prefix_len)?;
            self.queue.push_back(body.to_vec());
        }
        Ok(())
    }

    /// A version-2 continuation block: "OCHK", messages, checksum.
    fn push_v2(&mut self, addr: u64, len: u64) -> Result<()> {
        if let Some(block) = self.fetch(addr, len)? {
            if block.get(..4) != Some(b"OCHK".as_slice()) {
                bail!("continuation chunk at address {addr}: missing \"OCHK\" signature");
            }
            let body = verify_v2(&block, 4)?;
            self.queue.push_back(body.to_vec());
        }
        Ok(())
    }
}

/// Checks the trailing lookup3 checksum of a v2 chunk; returns the message bytes.
fn verify_v2(block: &[u8], prefix_len: usize) -> Result<&[u8]> {
    let Some(end) = block.len().checked_sub(4).filter(|&end| end >= prefix_len) else {
        bail!("object header chunk of {} bytes is too short", block.len());
    };
    let (covered, stored) = block.split_at(end);
    let mut c = Cursor::new(stored);
    if !checksum::matches(covered, c.u32()?) {
        bail!("object header checksum mismatch");
    }
    Ok(covered.get(prefix_len..).unwrap_or_default())
}

fn parse_messages(
    block: &[u8],
    version: u8,
    reader: &Reader,
    chunks: &mut Chunks,
    out: &mut Vec<Message>,
) -> Result<()> {
    let sizes = reader.sizes;
    let mut c = Cursor::new(block);
    // v1 message header: type u16, size u16, flags u8, 3 reserved bytes (data 8-aligned).
    // v2 message header: type u8, size u16, flags u8, creation order u16 when tracked.
    let header_len = match version {
        1 => 8,
        _ if chunks.creation_order => 6,
        _ => 4,
    };
    while c.remaining() >= header_len {
        let (kind, size, flags) = if version == 1 {
            let kind = c.u16()?;
            let size = c.u16()?;
            let flags = c.u8()?;
            c.skip(3)?;
            (kind, size, flags)
        } else {
            let kind = u16::from(c.u8()?);
            let size = c.u16()?;
            let flags = c.u8()?;
            if chunks.creation_order {
                c.skip(2)?;
            }
            (kind, size, flags)
        };
        let data = c.bytes(usize::from(size))?;
        if version == 1 {
            // Sizes should already be multiples of 8; tolerate a short final pad.
            let pad = (8 - c.pos() % 8) % 8;
            c.skip(pad.min(c.remaining()))?;
        }
        match kind {
            0 => {} // NIL: padding
            kind::CONTINUATION => {
                let mut m = Cursor::new(data);
                let addr = m
                    .addr(sizes)?
                    .ok_or_else(|| Error::new("continuation address is undefined"))?;
                let len = m.length(sizes)?;
                to_usize(len, "continuation length")?;
                if version == 1 {
                    chunks.push_v1(addr, len)?;
                } else {
                    chunks.push_v2(addr, len)?;
                }
            }
            _ => {
                if out.len() >= MAX_MESSAGES {
                    bail!("more than {MAX_MESSAGES} messages");
                }
                out.push(Message {
                    kind,
                    flags,
                    data: data.to_vec(),
                })
            }
        }
    }
    Ok(())
}
