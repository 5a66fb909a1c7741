//! Old-style groups (what h5py writes by default and what every Keras file uses): a version-1
//! B-tree ("TREE") whose leaves point to symbol nodes ("SNOD"), each listing members by
//! object header address and by name offset into the group's local heap ("HEAP").

use std::collections::HashSet;

use super::cursor::{Cursor, Sizes};
use super::error::{Error, Result, bail};
use super::source::Reader;

/// Far deeper than any real tree (a level-64 tree would need more entries than atoms
/// exist); only a crafted file gets near it.
const MAX_LEVEL: u8 = 64;

/// Lists (name, object header address) of every member, in B-tree order (sorted by name).
pub(super) fn members(reader: &Reader, btree: u64, heap: u64) -> Result<Vec<(String, u64)>> {
    let names =
        local_heap(reader, heap).map_err(|e| e.context(format!("local heap at address {heap}")))?;
    let mut walk = Walk {
        reader,
        seen: HashSet::new(),
        budget: reader.len(),
    };
    let mut out = Vec::new();
    // Real names never overlap, so together they fit in the heap; capping the total keeps a
    // crafted table (every entry pointing at one long name) from costing quadratic time.
    let mut name_budget = names.len();
    for snod in walk.leaves(btree)? {
        for (name_offset, addr) in walk
            .symbol_node(snod)
            .map_err(|e| e.context(format!("symbol node at address {snod}")))?
        {
            let name = heap_name(&names, name_offset)?;
            name_budget = match name_budget.checked_sub(name.len() + 1) {
                Some(left) => left,
                None => bail!("member names add up to more bytes than the local heap holds"),
            };
            out.push((name, addr));
        }
    }
    Ok(out)
}

/// The data segment of a local heap: "HEAP", version 0, 3 reserved, data segment size,
/// free-list offset, data segment address.
fn local_heap(reader: &Reader, addr: u64) -> Result<Vec<u8>> {
    let sizes = reader.sizes;
    let header = reader.read(
        addr,
        8 + 2 * sizes.length as u64 + sizes.offset as u64,
        "local heap",
    )?;
    let mut c = Cursor::new(&header);
    c.signature(b"HEAP", "local heap")?;
    let version = c.u8()?;
    if version != 0 {
        return Err(Error::unsupported(format!("local heap version {version}")));
    }
    c.skip(3)?;
    let size = c.length(sizes)?;
    c.length(sizes)?; // free list
    let data = c
        .addr(sizes)?
        .ok_or_else(|| Error::new("data segment address is undefined"))?;
    reader.read(data, size, "local heap data segment")
}

/// The NUL-terminated name at `offset` in the heap's data segment.
fn heap_name(heap: &[u8], offset: u64) -> Result<String> {
    let tail = usize::try_from(offset).ok().and_then(|o| heap.get(o..));
    let Some(name) = tail.and_then(|t| t.split(|&b| b == 0).next().filter(|n| n.len() < t.len()))
    else {
        bail!(
            "link name at heap offset {offset} lies outside the local heap ({} bytes)",
            heap.len()
        );
    };
    String::from_utf8(name.to_vec()).map_err(|_| {
        Error::new(format!(
            "link name at heap offset {offset} is not valid UTF-8"
        ))
    })
}

/// B-tree traversal state. Each node is read at most once and all nodes together may not
/// exceed the file's size, so a crafted tree with cycles or shared children still ends.
struct Walk<'r> {
    reader: &'r Reader,
    seen: HashSet<u64>,
    budget: u64,
}

impl Walk<'_> {
    fn read_once(&mut self, addr: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        if !self.seen.insert(addr) {
            bail!("{what} at address {addr} is reached twice (cycle in the group's B-tree)");
        }
        self.budget = match self.budget.checked_sub(len) {
            Some(left) => left,
            None => bail!("group B-tree nodes add up to more bytes than the file holds"),
        };
        self.reader.read(addr, len, what)
    }

    /// Addresses of the symbol nodes under the B-tree at `root`, left to right.
    fn leaves(&mut self, root: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        // Depth-first with an explicit stack (no recursion): (node address, required level).
        let mut stack = vec![(root, None)];
        while let Some((addr, level)) = stack.pop() {
            let (node_level, children) = self
                .node(addr, level)
                .map_err(|e| e.context(format!("B-tree node at address {addr}")))?;
            if node_level == 0 {
                out.extend(children);
            } else {
                stack.extend(
                    children
                        .into_iter()
                        .rev()
                        .map(|child| (child, Some(node_level - 1))),
                );
            }
        }
        Ok(out)
    }

    /// One group B-tree node: "TREE", type 0, level, entries used, left and right sibling,
    /// then key, child, key, child, ..., key. Keys are heap offsets; we only need children.
    fn node(&mut self, addr: u64, expected_level: Option<u8>) -> Result<(u8, Vec<u64>)> {
        let sizes = self.reader.sizes;
        let header_len = 8 + 2 * sizes.offset;
        let header = self.reader.read(addr, header_len as u64, "B-tree node")?;
        let mut c = Cursor::new(&header);
        c.signature(b"TREE", "B-tree node")?;
        let node_type = c.u8()?;
        if node_type != 0 {
            bail!("B-tree node of type {node_type} where a group node (type 0) was expected");
        }
        let level = c.u8()?;
        if level > MAX_LEVEL || expected_level.is_some_and(|l| l != level) {
            bail!(
                "B-tree node has level {level}, expected {expected_level:?} (at most {MAX_LEVEL})"
            );
        }
        let entries = usize::from(c.u16()?);
        let body_len = entries
            .checked_mul(sizes.length + sizes.offset)
            .and_then(|n| n.checked_add(sizes.length))
            .ok_or_else(|| Error::new("B-tree node size overflows"))?;
        let start = addr
            .checked_add(header_len as u64)
            .ok_or_else(|| Error::new("address overflows"))?;
        let body = self.read_once(start, body_len as u64, "B-tree node")?;
        let mut c = Cursor::new(&body);
        let mut children = Vec::with_capacity(entries);
        for _ in 0..entries {
            c.length(sizes)?;
            children.push(
                c.addr(sizes)?
                    .ok_or_else(|| Error::new("B-tree child address is undefined"))?,
            );
        }
        Ok((level, children))
    }

    /// A symbol node: "SNOD", version 1, reserved, symbol count, then symbol table entries
    /// (name offset, object header address, cache type, reserved, 16-byte scratch pad).
    fn symbol_node(&mut self, addr: u64) -> Result<Vec<(u64, u64)>> {
        let sizes: Sizes = self.reader.sizes;
        let header = self.reader.read(addr, 8, "symbol node")?;
        let mut c = Cursor::new(&header);
        c.signature(b"SNOD", "symbol node")?;
        let version = c.u8()?;
        if version != 1 {
            return Err(Error::unsupported(format!("symbol node version {version}")));
        }
        c.u8()?;
        let count = usize::from(c.u16()?);
        let entry_len = 2 * sizes.offset + 24;
        let start = addr
            .checked_add(8)
            .ok_or_else(|| Error::new("address overflows"))?;
        // At most 65535 entries of at most 40 bytes: no overflow possible.
        let body = self.read_once(start, (count * entry_len) as u64, "symbol node")?;
        let mut c = Cursor::new(&body);
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let name = c.uint(sizes.offset)?;
            let object = c
                .addr(sizes)?
                .ok_or_else(|| Error::new("member object header address is undefined"))?;
            c.skip(24)?; // cache type, reserved, scratch pad
            out.push((name, object));
        }
        Ok(out)
    }
}
